"""The report's accounting figures: the roll-up's energy per token, the gain over the baseline,
tok/J at low magnitudes, windows at or below idle, and what the roll-up's energy covers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from optimizer.config import AccountingConfig, SloConfig
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, ServingSummary, WindowResult
from optimizer.report.markdown import JOULES_PER_KWH, _candidates_table, _selected_section
from optimizer.results import MEASURED, CandidateResult
from unit.factories import candidate_result, performance_result, quality_result, torch_candidate

LATENCY = LatencySummary.of([0.1], [0.01])


def window(joules: float, goodput: int, active: float | None = None, source: str = "nvml") -> WindowResult:
    return WindowResult(
        source=source,
        joules=joules,
        active_joules=joules if active is None else active,
        seconds=10.0,
        output_tokens=goodput,
        goodput_tokens=goodput,
    )


def measured(windows: list[WindowResult], batch_size: int = 8, role: str = "candidate") -> CandidateResult:
    return CandidateResult(
        torch_candidate(batch_size=batch_size),
        MEASURED,
        quality=quality_result(),
        performance=PerformanceResult.of_windows(windows, 10.0, LATENCY, []),
        role=role,
    )


def rollup_row(lines: list[str], name: str = "selected") -> list[str]:
    table = next(i for i, line in enumerate(lines) if "device kWh" in line)
    row = next(line for line in lines[table:] if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in row.strip("|").split("|")[1:]]


# -- D1: the roll-up is energy over tokens, not 1 / the mean of per-window ratios ------------------


def test_the_rollup_is_all_windows_joules_over_all_their_goodput_tokens() -> None:
    """Two windows of 100 tokens, one at half the energy: 150 J per 200 tokens is 0.208 kWh per
    million; 1 / mean(1.0, 2.0 tok/J) would say 0.185 (11% under what was spent)."""
    best = measured([window(100.0, 100), window(50.0, 100)])
    assert best.objective == pytest.approx(1.5)  # selection's figure is unchanged
    cells = rollup_row(_selected_section(best, best, AccountingConfig(pue=1.0), None, "nvml"))
    spent = 150.0 / 200 * 1e6 / JOULES_PER_KWH
    assert float(cells[0]) == pytest.approx(spent, rel=0.005)
    assert cells[0] == "0.208"


def test_a_window_without_goodput_adds_its_energy_not_a_zero_ratio() -> None:
    best = measured([window(200.0, 400), window(50.0, 0)])
    assert best.performance is not None
    assert best.performance.pooled_goodput == pytest.approx(400 / 250)
    assert best.objective == pytest.approx(1.0)


def test_the_pooled_figure_survives_the_store_and_old_rows_take_it_from_their_windows() -> None:
    perf = measured([window(100.0, 100), window(50.0, 100)]).performance
    assert perf is not None
    data = perf.to_dict()
    assert PerformanceResult.from_dict(data) == perf
    data.pop("pooled_goodput_tokens_per_joule")  # a row stored before the field existed
    assert PerformanceResult.from_dict(data).pooled_goodput == pytest.approx(200 / 150)
    # built by hand without it: the mean, as before
    assert replace(perf, pooled_goodput_tokens_per_joule=None).pooled_goodput == pytest.approx(1.5)


# -- D2: the gain over the baseline ---------------------------------------------------------------


def gain_line(goodput: float) -> str:
    base = candidate_result(
        torch_candidate(batch_size=1),
        role="baseline",
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=10.0, source="nvml"),
    )
    best = candidate_result(
        torch_candidate(batch_size=8),
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=goodput, source="nvml"),
    )
    lines = _selected_section(best, base, AccountingConfig(), None, "nvml")
    return next(line for line in lines if "baseline" in line and line.startswith("**"))


def test_the_gain_has_two_decimals_and_a_loss_reads_below_the_baseline() -> None:
    above, below = gain_line(10.4), gain_line(9.6)
    assert above.startswith("**1.04×** goodput tokens per joule over the baseline")
    assert below.startswith("**0.96×**") and "below the baseline" in below and "over" not in below


# -- D3: tok/J to three significant digits everywhere ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(11.5, "11.5"), (0.0104, "0.0104"), (0.0096, "0.00960"), (1234.4, "1234"), (9.996, "10.0"), (0.0, "0")],
)
def test_three_significant_digits_in_fixed_notation(value: float, shown: str) -> None:
    from optimizer.results import sig3

    assert sig3(value) == shown


def test_low_tokj_candidates_8_percent_apart_read_apart() -> None:
    a = candidate_result(
        torch_candidate(batch_size=8),
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=0.0104),
    )
    b = candidate_result(
        torch_candidate(batch_size=4),
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=0.0096),
    )
    text = "\n".join(_candidates_table([a, b]))
    assert "| 0.0104 ± 0.0000 |" in text and "| 0.00960 ± 0.00000 |" in text
    selected = "\n".join(_selected_section(a, b, AccountingConfig(), None, "rapl"))
    assert "| 0.0104 ± 0.0000 |" in selected


def test_finalist_intervals_show_what_selection_tells_apart() -> None:
    from optimizer.report.selection import selection_section
    from optimizer.select import select_finalist

    def rounds(candidate: Any, per_window: list[float]) -> CandidateResult:
        wins = [window(10000.0, int(g * 10000), 9000.0, "rapl") for g in per_window]
        perf = PerformanceResult.of_windows(wins, 10.0, LATENCY, [])
        return CandidateResult(
            candidate, MEASURED, quality=quality_result(), performance=perf, role="finalist"
        )

    ca, cb = torch_candidate(batch_size=8), torch_candidate(batch_size=4)
    runs = {
        ca.key(): [rounds(ca, [0.0105, 0.0106, 0.0105, 0.0106])],
        cb.key(): [rounds(cb, [0.0102, 0.0103, 0.0102, 0.0103])],
    }
    searched = [
        candidate_result(c, quality=quality_result(), performance=performance_result()) for c in (ca, cb)
    ]
    selection = select_finalist(searched, runs, SloConfig(), 0.1)
    text = "\n".join(selection_section(selection, ""))
    assert selection.distinguishable
    assert "| 0.0106 | 0.0105 – 0.0106 |" in text and "| 0.0103 | 0.0102 – 0.0103 |" in text


def test_the_backends_and_serving_tables_show_three_significant_digits() -> None:
    from optimizer.report.backend_table import backends_section
    from optimizer.report.serving import serving_section

    torch_best = candidate_result(
        torch_candidate(batch_size=8),
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=0.0104),
    )
    from optimizer.backends.tensorrt.settings import TensorRTSettings
    from optimizer.space import Candidate

    excluded = [(Candidate(TensorRTSettings(), 1, 0), "TensorRT engines need an NVIDIA GPU target")]
    text = "\n".join(backends_section([torch_best], excluded, torch_best))
    assert "| 0.0104 | 1.00× |" in text
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=10,
        window_requests=10,
        met_slo_fraction=1.0,
        joules_per_request=1.0,
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
    )
    assert torch_best.performance is not None
    served = replace(torch_best, performance=replace(torch_best.performance, serving=serving))
    assert "| 0.0104 | 100% |" in "\n".join(serving_section([served], Path("unused"), ""))


def test_the_rollup_cells_stay_in_fixed_notation_at_cpu_scale() -> None:
    best = candidate_result(
        torch_candidate(batch_size=8),
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=0.02, source="rapl"),
    )
    cells = rollup_row(_selected_section(best, best, AccountingConfig(), None, "rapl"))
    assert not any("e+" in cell for cell in cells)
    assert cells[2] == "6667"  # grams per million tokens at 0.02 tok/J, 400 gCO2/kWh, PUE 1.2


# -- D4: windows at or below the idle baseline ----------------------------------------------------


def test_a_window_at_or_below_idle_is_left_out_of_active_tokj_and_flagged() -> None:
    from optimizer.report.flags import window_flags

    at_idle, above = window(95.0, 500, 0.0, "rapl"), window(120.0, 500, 20.0, "rapl")
    perf = PerformanceResult.of_windows([at_idle, above], 10.0, LATENCY, [])
    assert perf.active_tokens_per_joule.mean == pytest.approx(25.0)  # not (0 + 25) / 2
    flags = window_flags(perf)
    assert "at or below the idle baseline: idle overestimated? (1 of 2 windows)" in flags
    assert not any("idle" in flag for flag in window_flags(replace(perf, windows=[above])))


def test_every_window_at_idle_shows_no_active_figure() -> None:
    best = measured([window(95.0, 500, 0.0, "rapl"), window(90.0, 500, 0.0, "rapl")])
    row = next(
        line
        for line in _selected_section(best, best, AccountingConfig(), None, "rapl")
        if "| selected |" in line
    )
    assert "n/a (≤ idle)" in row


# -- what the roll-up's energy covers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "device"),
    [("nvml", "the GPU boards'"), ("rapl", "the CPU package's"), ("estimate", "the CPU's")],
)
def test_the_rollup_caption_names_the_metered_device_and_the_pue(source: str, device: str) -> None:
    best = candidate_result(
        torch_candidate(batch_size=8), quality=quality_result(), performance=performance_result(source=source)
    )
    lines = _selected_section(best, best, AccountingConfig(pue=1.3), None, source)
    caption = next(line for line in lines if "Facility roll-up" in line)
    assert f"device kWh are {device}" in caption and "energy only" in caption
    assert "× PUE 1.3" in caption


def test_a_gain_just_below_one_reads_below_the_baseline() -> None:
    """0.996x rounded to two decimals read "1.00x goodput tokens per joule over the baseline"."""
    line = gain_line(9.96)
    assert line.startswith("**0.996×**") and "below the baseline" in line and "over" not in line
    assert gain_line(10.0).startswith("**1.00×** goodput tokens per joule over the baseline")


def test_a_met_slo_share_is_never_rounded_to_all_or_none() -> None:
    """99.6% of requests meeting the SLO read 100% in the serving table."""
    from optimizer.report.serving import share

    assert [share(f) for f in (1.0, 0.996, 0.95, 0.004, 0.0, 0.99996)] == [
        "100%",
        "99.6%",
        "95%",
        "0.4%",
        "0%",
        "99.996%",
    ]


def test_ratio_text_keeps_a_loss_visible() -> None:
    """The CLI's summary line and the report share it: 0.996 read '1.00x the baseline'."""
    from optimizer.results import ratio_text

    assert [ratio_text(r) for r in (0.996, 0.96, 1.0, 1.004, 2.5)] == [
        "0.996",
        "0.96",
        "1.00",
        "1.00",
        "2.50",
    ]
