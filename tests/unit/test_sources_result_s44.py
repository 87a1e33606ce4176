"""A result whose windows mixed energy sources (an NVML counter that stuck mid-run, energy.py)
carries every one, not its first window's; a store row written before still loads."""

from __future__ import annotations

import json

from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, WindowResult
from optimizer.results import CandidateResult

from .factories import candidate_result, quality_result


def window(source: str, joules: float = 10.0) -> WindowResult:
    return WindowResult(
        source, joules=joules, active_joules=5.0, seconds=2.0, output_tokens=100, goodput_tokens=100
    )


def result(*sources: str) -> PerformanceResult:
    latency = LatencySummary.of([0.1], [0.01])
    return PerformanceResult.of_windows([window(s) for s in sources], 1.0, latency, [])


def test_a_result_over_mixed_windows_carries_every_source() -> None:
    perf = result("nvml", "nvml-power-poll", "nvml-power-poll")
    assert perf.sources == ("nvml", "nvml-power-poll")
    # labelled with both, never as its first window's counter alone
    assert perf.source == "nvml+nvml-power-poll"
    assert not perf.is_estimate


def test_one_source_throughout_reads_as_before() -> None:
    perf = result("rapl", "rapl")
    assert (perf.source, perf.sources, perf.is_estimate) == ("rapl", ("rapl",), False)
    assert result("estimate").is_estimate


def test_an_estimate_mixed_with_a_measurement_is_an_estimate() -> None:
    perf = result("rapl", "estimate")
    assert perf.is_estimate and perf.sources == ("rapl", "estimate")
    assert "estimate" in perf.source


def _stored(row: dict[str, object]) -> CandidateResult:
    return CandidateResult.from_dict(json.loads(json.dumps(row)))


def test_a_mixed_result_round_trips_through_a_store_row() -> None:
    perf = result("nvml", "nvml-power-poll")
    row = candidate_result(quality=quality_result(), performance=perf).to_dict()
    loaded = _stored(row).performance
    assert loaded is not None
    assert (loaded.source, loaded.sources) == (perf.source, perf.sources)


def test_an_old_store_row_labelled_by_its_first_window_loads_with_every_source() -> None:
    """A row written before results carried their sources: `source` was the first window's."""
    row = candidate_result(quality=quality_result(), performance=result("nvml", "nvml-power-poll")).to_dict()
    row["performance"]["source"] = "nvml"
    row["performance"].pop("sources", None)
    loaded = _stored(row).performance
    assert loaded is not None
    assert loaded.sources == ("nvml", "nvml-power-poll") and loaded.source == "nvml+nvml-power-poll"
    single = candidate_result(quality=quality_result(), performance=result("rapl")).to_dict()
    single["performance"].pop("sources", None)
    again = _stored(single).performance
    assert again is not None and (again.source, again.sources) == ("rapl", ("rapl",))
