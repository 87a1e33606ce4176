"""The report labels a candidate whose windows mixed energy sources as mixed, naming them, and
never presents an estimate mixed with a measurement as a measurement."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from optimizer.config import RunConfig
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, WindowResult
from optimizer.report.flags import compared_sources, mixed_sources_note, source_groups
from optimizer.report.markdown import write_report
from optimizer.results import CandidateResult
from optimizer.search.runner import SearchOutcome

from .factories import candidate_result, quality_result, target_spec, torch_candidate


def _result(batch: int, *sources: str, role: str = "candidate") -> CandidateResult:
    windows = [
        WindowResult(
            s,
            joules=10.0,
            active_joules=5.0,
            seconds=2.0,
            output_tokens=100 * batch,
            goodput_tokens=100 * batch,
        )
        for s in sources
    ]
    perf = PerformanceResult.of_windows(windows, 1.0, LatencySummary.of([0.1], [0.01]), [])
    return candidate_result(
        candidate=torch_candidate(batch_size=batch), quality=quality_result(), performance=perf, role=role
    )


def test_a_mixed_candidate_is_labelled_mixed_against_the_baseline() -> None:
    best, baseline = _result(4, "nvml", "nvml-power-poll"), _result(1, "nvml", role="baseline")
    line = compared_sources(best, baseline)
    assert "mixed `nvml` and `nvml-power-poll`" in line, line
    note = mixed_sources_note(source_groups([baseline, best]), best)
    assert "the selected candidate's windows: mixed `nvml` and `nvml-power-poll`" in note, note


def test_two_mixed_candidates_are_not_one_energy_source() -> None:
    best, baseline = _result(4, "nvml", "nvml-power-poll"), _result(1, "nvml", "nvml-power-poll")
    line = compared_sources(best, baseline)
    assert "same energy source," not in line and "mixed `nvml` and `nvml-power-poll`" in line, line
    assert compared_sources(_result(2, "rapl"), _result(1, "rapl")) == ", same energy source, same workload."


def test_an_estimate_mixed_with_a_measurement_is_never_called_measured(tmp_path: Path) -> None:
    best, baseline = _result(4, "rapl", "estimate"), _result(1, "rapl", role="baseline")
    note = mixed_sources_note(source_groups([baseline, best]), best)
    assert "measured by more than one source" not in note and "ESTIMATE" in note, note
    assert "ESTIMATE" in compared_sources(best, baseline)
    model = SimpleNamespace(
        name="tiny", source="/m/tiny", format="hf-dir", weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )  # fmt: skip
    setup = SimpleNamespace(
        model=model, target=target_spec(), meter=SimpleNamespace(source="rapl"), stream=None
    )
    outcome = SearchOutcome(
        baseline=baseline,
        baseline_in_space=True,
        results=[baseline, best],
        not_reached=[],
        measuring_seconds=1.0,
    )
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], best, 1.0, None).read_text()
    selected = text.split("## Selected")[1].split("\n## ")[0]
    assert "**ESTIMATE** (CPU-time energy estimate, not a measurement)" in selected, selected
