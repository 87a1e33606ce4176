"""Small wording and number defects: the quality windows' error counts the held-out split and names
both settings; JSON suffixes in any case; J/request without e-notation; a roll-up that read 0 J
is not "no request met the SLO"; accounting's -0.0 prints as 0."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import AccountingConfig
from optimizer.errors import UserError
from optimizer.measure.text import load_text, quality_windows
from optimizer.measure.workload import PerformanceResult, ServingSummary
from optimizer.report.markdown import _selected_section
from optimizer.report.serving import serving_section
from unit.factories import candidate_result, performance_result


class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_too_short_quality_text_counts_the_held_out_split_and_names_both_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"p{i}" for i in range(10)))  # held out: p0 and p5, 4 tokens each
    with pytest.raises(UserError) as info:
        quality_windows(CharTokenizer(), load_text(str(path)), seq_tokens=64, num_sequences=4)
    error = info.value
    assert error.field == "quality.num_sequences"
    assert f"the held-out quality split of {path} (every 5th paragraph) yields 8 tokens" in error.problem
    assert "256 are needed" in error.problem
    assert "quality.num_sequences (4)" in error.fix and "quality.seq_tokens (64)" in error.fix


def test_quality_windows_come_from_the_held_out_split(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"p{i}" for i in range(10)))
    windows = quality_windows(
        CharTokenizer(), load_text(str(path)), seq_tokens=3, num_sequences=2, start=(1,)
    )
    assert windows == [[1, ord("p"), ord("0")], [1, ord("\n"), ord("\n")]]


@pytest.mark.parametrize("name", ["a.JSONL", "a.Jsonl", "b.JSON"])
def test_json_suffixes_are_read_as_json_in_any_case(tmp_path: Path, name: str) -> None:
    items = [{"text": f"t{i}"} for i in range(10)]
    raw = json.dumps(items) if name.lower().endswith(".json") else "\n".join(json.dumps(i) for i in items)
    (tmp_path / name).write_text(raw)
    assert load_text(str(tmp_path / name)).quality == ["t0", "t5"]


def test_a_short_json_file_is_not_told_about_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "s.JSON").write_text(json.dumps([f"t{i}" for i in range(3)]))
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path / "s.JSON"))
    assert "blank lines" not in info.value.fix and "text entries" in info.value.fix


def _served(joules_per_request: float) -> list[str]:
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=10,
        window_requests=10,
        met_slo_fraction=1.0,
        joules_per_request=joules_per_request,
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
    )
    result = candidate_result(performance=replace(performance_result(), serving=serving))
    return serving_section([result], Path("/nonexistent"))


@pytest.mark.parametrize(("joules", "shown"), [(1280.0, "1280"), (999.6, "1000"), (12.5, "12.5"), (6.0, "6")])
def test_joules_per_request_print_without_e_notation(joules: float, shown: str) -> None:
    row = next(line for line in _served(joules) if line.startswith("| torch"))
    assert row.split(" | ")[3] == shown


def _rollup_cell(performance: PerformanceResult) -> str:
    r = candidate_result(performance=performance)
    lines = _selected_section(r, r, AccountingConfig(), None, "nvml")
    return [line for line in lines if line.startswith("| selected |")][-1]


def test_a_rollup_of_windows_that_read_no_joules_does_not_blame_the_slo() -> None:
    p = performance_result()
    dead = replace(p.windows[0], joules=0.0, active_joules=0.0)
    row = _rollup_cell(PerformanceResult.of_windows([dead, dead], 20.0, p.latency, []))
    assert "the meter read 0 J" in row and "SLO" not in row


def test_a_rollup_with_joules_but_no_goodput_still_says_no_request_met_the_slo() -> None:
    p = performance_result()
    missed = replace(p.windows[0], goodput_tokens=0)
    row = _rollup_cell(PerformanceResult.of_windows([missed, missed], 20.0, p.latency, ["TPOT"]))
    assert "no request met the SLO" in row


def test_negative_zero_accounting_values_are_zero() -> None:
    accounting = AccountingConfig(grid_gco2_per_kwh=-0.0, price_per_kwh=-0.0)
    assert math.copysign(1, accounting.grid_gco2_per_kwh) == 1
    assert math.copysign(1, accounting.price_per_kwh) == 1
    assert f"{accounting.grid_gco2_per_kwh:g} {accounting.price_per_kwh:g}" == "0 0"


def test_negative_zero_from_an_override_prints_as_zero() -> None:
    from optimizer.config.compose import compose_run_config

    cfg = compose_run_config(["target=cpu", "accounting.grid_gco2_per_kwh=-0.0"])
    assert f"{cfg.accounting.grid_gco2_per_kwh:g}" == "0"
