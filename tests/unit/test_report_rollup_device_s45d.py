"""The roll-up names the device whose energy its rows' joules are by those rows' own energy
sources, not by the meter's source now: results reused from a run whose NVML counter fell back to
polled power were labelled "the GPU boards' (NVML)" beside an energy-source line saying polled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from optimizer.config import AccountingConfig, RunConfig
from optimizer.report.markdown import _selected_section, write_report
from optimizer.results import CandidateResult
from optimizer.search.runner import SearchOutcome

from .conftest import target_spec
from .factories import candidate_result, performance_result, quality_result, torch_candidate


def _result(batch_size: int, goodput: float, source: str, role: str = "search") -> CandidateResult:
    return candidate_result(
        candidate=torch_candidate(batch_size=batch_size),
        role=role,
        quality=quality_result(),
        performance=performance_result(goodput_tokens_per_joule=goodput, source=source),
    )


def _rollup_caption(lines: list[str]) -> str:
    return next(line for line in lines if "device kWh are" in line)


def test_the_rollup_names_the_results_source_not_the_meters_now(tmp_path: Path) -> None:
    base = _result(1, 1.0, "nvml-power-poll", role="baseline")
    best = _result(8, 4.0, "nvml-power-poll")
    outcome = SearchOutcome(
        baseline=base, baseline_in_space=True, results=[base, best], not_reached=[], measuring_seconds=1.0
    )
    model = SimpleNamespace(
        name="tiny",
        source="/m",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3e6),
    )
    # the meter now reads the counter; every result shown was measured by polled power
    setup = SimpleNamespace(
        model=model, target=target_spec(), meter=SimpleNamespace(source="nvml"), stream=None
    )
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], best, 10.0, None).read_text()
    caption = _rollup_caption(text.splitlines())
    assert "the GPU boards' (NVML power polled) energy only" in caption, caption


def test_rows_measured_by_two_sources_name_both() -> None:
    best, base = _result(8, 4.0, "nvml"), _result(1, 1.0, "nvml-power-poll", role="baseline")
    caption = _rollup_caption(_selected_section(best, base, AccountingConfig(), None, "nvml"))
    assert "the GPU boards' (NVML) and the GPU boards' (NVML power polled) energy only" in caption


def test_an_unknown_source_is_named_as_it_is() -> None:
    best = _result(8, 4.0, "wattmeter")
    caption = _rollup_caption(_selected_section(best, best, AccountingConfig(), None, "rapl"))
    assert "the metered device's (`wattmeter`) energy only" in caption
