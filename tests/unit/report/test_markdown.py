"""report.md and pareto.png from hand-made results."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer.config import AccountingConfig, RunConfig
from optimizer.errors import UserError
from optimizer.report.markdown import JOULES_PER_KWH, energy_source_note, rollup, write_report
from optimizer.report.plots import plot_pareto
from optimizer.results import FAILED, PRUNED, REJECTED
from optimizer.search.runner import SearchOutcome


def test_rollup_arithmetic() -> None:
    acc = AccountingConfig(pue=1.5, grid_gco2_per_kwh=400, price_per_kwh=0.2)
    ru = rollup(2.0, acc)  # 1e6 tokens at 2 tok/J = 5e5 J
    assert ru["device_kwh"] == pytest.approx(5e5 / JOULES_PER_KWH)
    assert ru["facility_kwh"] == pytest.approx(ru["device_kwh"] * 1.5)
    assert ru["gco2"] == pytest.approx(ru["facility_kwh"] * 400)
    assert ru["cost"] == pytest.approx(ru["facility_kwh"] * 0.2)
    assert rollup(0.0, acc) == {}


@pytest.mark.parametrize("goodput", [2.0, 190.7, 1000.0, 2000.0])
def test_the_rollup_keeps_its_figures_at_gpu_scale(make_result, make_performance, goodput: float) -> None:
    """Fixed decimals read 0.0000 USD (or 15% off) at hundreds of tokens/J: the table keeps three
    significant digits of every figure."""
    from optimizer.report.markdown import _selected_section

    acc = AccountingConfig()
    best = make_result(performance=make_performance(goodput_tokens_per_joule=goodput))
    lines = _selected_section(best, best, acc, None, "nvml")
    table = next(i for i, line in enumerate(lines) if "device kWh" in line)
    row = next(line for line in lines[table:] if line.startswith("| selected |"))
    cells = [cell.split()[0] for cell in row.strip("|").split("|")[1:]]
    ru = rollup(goodput, acc)
    shown = dict(zip(("device_kwh", "facility_kwh", "gco2", "cost"), map(float, cells), strict=True))
    assert shown == pytest.approx(ru, rel=0.01)


@pytest.fixture
def setup(make_target):
    shape = SimpleNamespace(num_parameters=3_000_000)
    model = SimpleNamespace(
        name="tiny", source="/m/tiny", format="hf-dir", weight_sha256="ab" * 32, shape=shape
    )
    return SimpleNamespace(
        model=model, target=make_target(), meter=SimpleNamespace(source="estimate"), stream=None
    )


@pytest.fixture
def outcome(make_result, make_candidate, make_quality, make_performance) -> SearchOutcome:
    base = make_result(
        candidate=make_candidate(batch_size=1),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(goodput_tokens_per_joule=1.0),
    )
    results = [
        base,
        make_result(
            candidate=make_candidate(batch_size=8, precision="bf16"),
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=4.0),
        ),
        make_result(
            candidate=make_candidate(batch_size=64),
            quality=make_quality(),
            performance=make_performance(
                goodput_tokens_per_joule=9.0, slo_violations=["TPOT p90 900 ms > x"]
            ),
        ),
        make_result(
            candidate=make_candidate(quantization="int8-dynamic"),
            status=REJECTED,
            reason="KL | too high",
            quality=make_quality(mean_kl=0.3),
        ),
        make_result(candidate=make_candidate(quantization="int8-weight"), status=FAILED, reason="boom"),
        make_result(candidate=make_candidate(batch_size=512), status=PRUNED, reason="needs ~99 GiB"),
    ]
    return SearchOutcome(
        baseline=base, baseline_in_space=True, results=results, not_reached=[], measuring_seconds=12.0
    )


def test_report_with_a_selection(tmp_path: Path, setup, outcome: SearchOutcome, make_candidate) -> None:
    from optimizer.select import select_best

    best = select_best(outcome.selectable)
    assert best is not None and best.candidate.batch_size == 8
    excluded = [(make_candidate(precision="fp16"), "fp16 has no fast kernels on this target")]
    path = write_report(tmp_path, RunConfig(), setup, outcome, excluded, best, 12.5, None)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "ESTIMATE" in text
    assert "**4.00×** goodput tokens per joule over the baseline" in text
    assert best.candidate.label() in text
    assert "1 × fp16 has no fast kernels on this target" in text
    assert "KL / too high" in text  # a pipe in a reason does not break the table
    assert "measured 3 (feasible 2), rejected by the quality bound 1, failed 1, pruned 1" in text


def test_the_selected_row_says_it_is_a_finalists_re_measurement(outcome: SearchOutcome) -> None:
    """The selected candidate has two figures in a report with finalists: say which is which."""
    from optimizer.report.markdown import _selected_section

    best = outcome.results[0]
    plain = "\n".join(_selected_section(best, outcome.baseline, RunConfig().accounting, None, "rapl"))
    finalist = "\n".join(
        _selected_section(best, outcome.baseline, RunConfig().accounting, None, "rapl", True)
    )
    assert "re-measurement as a finalist" in finalist and "re-measurement" not in plain
    assert "goodput tok/J (mean ± sd)" in plain


def test_a_single_window_shows_no_spread(outcome: SearchOutcome) -> None:
    """A candidate screened out after one window has no sd: the table says so, not "± 0.00"."""
    import dataclasses

    from optimizer.report.markdown import _candidates_table

    screened = outcome.results[1]
    assert screened.performance is not None
    one = dataclasses.replace(screened.performance, windows=screened.performance.windows[:1])
    rows = "\n".join(_candidates_table([dataclasses.replace(screened, performance=one)]))
    assert "4.00 (1 window)" in rows and "±" not in rows.split("\n", 3)[3]
    two = "\n".join(_candidates_table([screened]))
    assert "4.00 ± 0.00" in two  # two windows that agree: a spread of 0 is a measurement


def test_the_quality_bound_is_shown_as_set(tmp_path: Path, setup, outcome: SearchOutcome) -> None:
    """Rounded, 97.5% read 98%, and a candidate at 97.7% top-1 seemed to break the bound."""
    from optimizer.config import QualityConfig

    cfg = RunConfig(quality=QualityConfig(max_ppl_increase=0.0025, min_top1_agreement=0.975))
    text = write_report(tmp_path, cfg, setup, outcome, [], outcome.results[1], 1.0, None).read_text()
    assert "perplexity ≤ +0.25%, top-1 agreement ≥ 97.5%," in text


def test_report_when_nothing_is_feasible(tmp_path: Path, setup, outcome: SearchOutcome) -> None:
    error = UserError("workload.slo", "all candidates miss the latency SLO", "raise workload.slo.tpot_ms")
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], None, 12.5, error).read_text()
    assert "**Nothing feasible.** workload.slo: all candidates miss the latency SLO" in text


def test_energy_source_notes(setup) -> None:
    assert "ESTIMATE" in energy_source_note("estimate", setup)
    assert "NVML" in energy_source_note("nvml", setup)
    assert "RAPL" in energy_source_note("rapl", setup)


def test_plot_without_any_measurement(tmp_path: Path, make_result) -> None:
    failed = make_result(status=FAILED, reason="boom")
    path = plot_pareto(tmp_path / "p.png", [failed], [], None, failed, 0.05, "rapl")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_every_energy_source_is_labelled_by_its_name(setup) -> None:
    """The polled NVML power is not RAPL; an unknown source is named as it is."""
    poll = energy_source_note("nvml-power-poll", setup)
    assert "nvml-power-poll" in poll and "RAPL" not in poll
    other = energy_source_note("wattmeter", setup)
    assert "`wattmeter`" in other and "RAPL" not in other


def _report(tmp_path: Path, setup, outcome: SearchOutcome, make_candidate) -> str:
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.select import select_best
    from optimizer.space import Candidate

    best = select_best(outcome.selectable)
    excluded = [(Candidate(OrtGenaiSettings(), 1, 2), "no onnxruntime-genai here")]  # a second backend
    return write_report(tmp_path, RunConfig(), setup, outcome, excluded, best, 12.5, None).read_text()


ESTIMATE_MARK = "**ESTIMATE**"


def test_rollup_and_backend_table_are_marked_when_estimated(
    tmp_path: Path, setup, outcome: SearchOutcome, make_candidate
) -> None:
    lines = _report(tmp_path, setup, outcome, make_candidate).splitlines()
    rollup_line = next(line for line in lines if "Facility roll-up" in line)
    backends_line = next(line for line in lines if "Best feasible candidate of each backend" in line)
    assert rollup_line.startswith(ESTIMATE_MARK) and backends_line.startswith(ESTIMATE_MARK)
    assert "per million goodput tokens" in rollup_line  # what the figures are computed from
    # every section that shows estimated joules says so before its figures
    for heading in ("## Selected", "## All candidates"):
        after = lines[lines.index(heading) + 1 :]
        assert next(line for line in after if line).startswith(ESTIMATE_MARK), heading
    pareto = next(line for line in lines if "Pareto front" in line)
    assert pareto.startswith(ESTIMATE_MARK)
    setup.meter.source = "rapl"
    lines = _report(tmp_path, setup, outcome, make_candidate).splitlines()
    assert not any(line.startswith(ESTIMATE_MARK) for line in lines)


def test_window_flags_are_shown(tmp_path: Path, setup, outcome: SearchOutcome, make_candidate) -> None:
    text = _report(tmp_path, setup, outcome, make_candidate)
    assert "## Measurement flags" in text
    assert "| a warning (2 of 2 windows) |" in text  # the factory's windows each carry one


def test_the_workload_line_names_a_traces_own_rate() -> None:
    """A trace is replayed at its own times: the report says its rate, not workload.rate's."""
    from optimizer.config import WorkloadConfig
    from optimizer.measure.stream import RequestStream, StreamRequest
    from optimizer.report.serving import workload_line

    requests = tuple(StreamRequest(i, i / 10, (1, 2), 2) for i in range(13))  # 10 req/s
    trace = workload_line(
        WorkloadConfig(kind="serving", trace="t.jsonl", rate=2.0), RequestStream(requests, "trace t.jsonl")
    )
    assert "request stream `trace t.jsonl`, selected at 10 req/s;" in trace
    generated = RequestStream(requests, "chat: poisson 2 req/s, seed 0")
    line = workload_line(WorkloadConfig(kind="serving", rate=2.0, rates=[1.0, 2.0]), generated)
    assert (
        "stream `chat: poisson 2 req/s, seed 0`, selected at 2 req/s; load curve at [1.0, 2.0] req/s;" in line
    )
