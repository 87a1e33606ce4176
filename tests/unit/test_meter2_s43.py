"""An NVML meter that falls back to polled power mid-search (its energy counter stuck): the report
says which candidates' windows were measured by which source, and that the selection compared
across them, instead of naming the run meter's source for all."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from optimizer.config import RunConfig
from optimizer.measure.energy import NvmlMeter, meter_for_engine
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, WindowResult
from optimizer.report.flags import flags_section
from optimizer.report.markdown import write_report
from optimizer.results import CandidateResult
from optimizer.search.runner import SearchOutcome

from .factories import candidate_result, quality_result, target_spec, torch_candidate

SPEEDUP = 20.0  # the meters' clock runs this much faster than time: a 0.06 s sleep reads 1.2 s
ENGINE_BOARD = "00000000:02:00.0"


def _clock() -> float:
    return time.perf_counter() * SPEEDUP


class BoardsNvml:
    """Two boards at a steady 300 W: cuda:0's counter advances; the board an engine's ranks use
    (named by PCI bus id) has a counter that does not."""

    NVMLError = RuntimeError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"cuda:{index}"

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> str:
        return bus

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        return 7_000 if handle == ENGINE_BOARD else round(_clock() * 300_000)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 300_000

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return 50

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        return 1980


def _measured(
    meter: Any, label_batch: int, tokens: int = 600, windows: int = 2, **fields: Any
) -> CandidateResult:
    results = []
    for _ in range(windows):
        with meter.window() as measurement:
            time.sleep(0.06)
        results.append(WindowResult.of(measurement, tokens, tokens, list(measurement.warnings), None))
    latency = LatencySummary.of([0.1, 0.2, 0.3], [0.01, 0.02, 0.03])
    perf = PerformanceResult.of_windows(results, meter.idle_watts, latency, [])
    return candidate_result(
        candidate=torch_candidate(batch_size=label_batch),
        quality=quality_result(),
        performance=perf,
        **fields,
    )


def _setup(meter: Any) -> SimpleNamespace:
    model = SimpleNamespace(
        name="tiny", source="/m/tiny", format="hf-dir", weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )  # fmt: skip
    return SimpleNamespace(model=model, target=target_spec(kind="cuda"), meter=meter, stream=None)


def _energy_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("- energy source:"))


def test_an_engine_meter_that_fell_back_is_named_for_its_candidates(tmp_path: Path) -> None:
    """The run meter's counter works; the engine of b4 runs on a board whose counter is stuck, so
    its meter (meter_for_engine) falls back to polled power. The report named `nvml` for all."""
    run = NvmlMeter([0], poll_seconds=0.01, nvml=BoardsNvml(), clock=_clock, cuda_uuid=lambda index: None)
    run.idle_watts = 50.0
    baseline = _measured(run, 1, tokens=600, role="baseline")
    layout = SimpleNamespace(pci_bus_ids=[ENGINE_BOARD])
    engine_meter = meter_for_engine(run, layout)
    fell_back = _measured(engine_meter, 4, tokens=900)  # polled power, and selected (the most tok/J)
    other = _measured(run, 2, tokens=700)
    assert run.source == "nvml" and engine_meter.source == "nvml-power-poll"
    assert {w.source for w in fell_back.performance.windows} == {"nvml-power-poll"}  # type: ignore[union-attr]
    outcome = SearchOutcome(
        baseline=baseline, baseline_in_space=True, results=[baseline, fell_back, other],
        not_reached=[], measuring_seconds=1.0,
    )  # fmt: skip
    text = write_report(tmp_path, RunConfig(), _setup(run), outcome, [], fell_back, 50.0, None).read_text()
    energy = _energy_line(text)
    assert "`nvml-power-poll`" in energy and "`nvml`" in energy, energy
    assert "b4" in energy.split("`nvml-power-poll`")[1], energy  # which candidate polled power measured
    # the selection ranked them together: said so
    assert "compared tokens/J across these sources" in energy, energy
    gain = next(line for line in text.splitlines() if "over the baseline" in line)
    assert "same energy source" not in gain and "nvml-power-poll" in gain, gain
    flags = text.split("## Measurement flags")[1]
    row = next(line for line in flags.splitlines() if line.startswith("| torch fp32 kv=dynamic b4"))
    assert "energy by `nvml-power-poll`, most windows in the run by `nvml` (2 of 2 windows)" in row, row


def test_the_run_meter_falling_back_mid_search_leaves_earlier_candidates_on_the_counter(
    tmp_path: Path,
) -> None:
    """The run meter's own counter stops after the first candidate: its source then reads
    nvml-power-poll, and the report named polled power for the candidate the counter measured."""
    stuck = False

    class StoppingNvml(BoardsNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
            return 5 if stuck else round(_clock() * 300_000)

    run = NvmlMeter([0], poll_seconds=0.01, nvml=StoppingNvml(), clock=_clock, cuda_uuid=lambda index: None)
    run.idle_watts = 50.0
    baseline = _measured(run, 1, role="baseline")
    stuck = True
    later = _measured(run, 8, tokens=900)
    assert run.source == "nvml-power-poll"
    outcome = SearchOutcome(
        baseline=baseline, baseline_in_space=True, results=[baseline, later],
        not_reached=[], measuring_seconds=1.0,
    )  # fmt: skip
    text = write_report(tmp_path, RunConfig(), _setup(run), outcome, [], later, 50.0, None).read_text()
    energy = _energy_line(text)
    assert "`nvml`" in energy and "b1" in energy.split("`nvml`")[1].split("`nvml-power-poll`")[0], energy


def test_one_source_throughout_reads_as_before(tmp_path: Path) -> None:
    run = NvmlMeter([0], poll_seconds=0.01, nvml=BoardsNvml(), clock=_clock, cuda_uuid=lambda index: None)
    baseline = _measured(run, 1, role="baseline", windows=1)
    best = _measured(run, 2, tokens=900, windows=1)
    outcome = SearchOutcome(
        baseline=baseline, baseline_in_space=True, results=[baseline, best],
        not_reached=[], measuring_seconds=1.0,
    )  # fmt: skip
    text = write_report(tmp_path, RunConfig(), _setup(run), outcome, [], best, 0.0, None).read_text()
    assert _energy_line(text) == (
        "- energy source: **measured**: NVML total-energy counter of the GPU (millijoule counter, "
        "CUDA synced at window edges)."
    )
    assert "same energy source, same workload." in text
    assert "energy by `" not in text.split("## Measurement flags")[1]


def test_a_finalist_whose_rounds_used_two_sources_is_flagged() -> None:
    """A candidate whose windows mixed counter and polled power (the fallback inside it)."""
    run = NvmlMeter([0], poll_seconds=0.01, nvml=BoardsNvml(), clock=_clock, cuda_uuid=lambda index: None)
    counted = _measured(run, 2, windows=1)
    polled = _measured(meter_for_engine(run, SimpleNamespace(pci_bus_ids=[ENGINE_BOARD])), 2, windows=2)
    assert counted.performance is not None and polled.performance is not None
    # the window after the one that found the counter stuck: polled, with no warning of its own
    windows = [*counted.performance.windows, polled.performance.windows[1]]
    assert not any("counter advanced" in w for w in windows[1].warnings)
    latency = counted.performance.latency
    mixed = candidate_result(
        candidate=torch_candidate(batch_size=2),
        performance=PerformanceResult.of_windows(windows, 0.0, latency, []),
    )
    lines = flags_section([mixed])
    row = next(line for line in lines if line.startswith("| torch fp32 kv=dynamic b2"))
    assert "energy by `nvml-power-poll`" in row and "1 of 2 windows" in row, row
