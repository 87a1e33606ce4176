"""Energy of everything a layout uses: every GPU board its ranks run on, and on the CPU estimate
the CPU time of every rank process."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer.measure.cpu_time import process_cpu_seconds, track_processes, untrack_processes
from optimizer.measure.energy import EstimateMeter, NvmlMeter, meter_for_engine

BOARDS = {"00000000:18:00.0": 0, "00000000:3B:00.0": 1}


class TwoBoards:
    """A fake NVML of two GPUs whose energy counters (mJ) advance at 300 W and 100 W of time."""

    NVMLError = RuntimeError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.watts = [300.0, 100.0]

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> int:
        return BOARDS[bus]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return int(self.watts[handle] * self.clock[0] * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self.watts[handle] * 1000)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 40

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return 1500


def test_a_layout_is_measured_on_every_board_its_ranks_use() -> None:
    now = [100.0]
    nvml = TwoBoards(now)
    meter = NvmlMeter([0], poll_seconds=0.001, nvml=nvml, clock=lambda: now[0])
    meter.idle_watts = 70.0
    engine = SimpleNamespace(pci_bus_ids=list(BOARDS))
    both = meter_for_engine(meter, engine)
    assert isinstance(both, NvmlMeter) and both is not meter
    assert both.idle_watts == 140.0  # the one board's idle baseline, per board
    with both.window() as measurement:
        now[0] += 4.0
    assert measurement.joules == pytest.approx((300 + 100) * 4.0)
    assert measurement.polled_joules == pytest.approx((300 + 100) * 4.0)
    with meter.window() as one:  # the single-device meter is unchanged
        now[0] += 4.0
    assert one.joules == pytest.approx(300 * 4.0)
    assert meter_for_engine(meter, SimpleNamespace()) is meter  # an engine on one device


def _busy_child(seconds: float) -> subprocess.Popen[Any]:
    code = f"import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _spin_until_it_spent(pid: int, seconds: float) -> None:
    """Wait until the process has spent `seconds` more CPU time than now, whatever its CPU share."""
    end, deadline = process_cpu_seconds(pid) + seconds, time.monotonic() + 120
    while process_cpu_seconds(pid) < end:
        assert time.monotonic() < deadline, "the child stopped spinning"
        time.sleep(0.02)


def test_the_estimate_counts_the_cpu_time_of_tracked_processes() -> None:
    # Judged by the child's CPU seconds inside each window, not by wall time: on a loaded machine
    # the child may get a fraction of a core, and a window of 0.2 s wall would hold too little of
    # its CPU time to tell counted from not counted. It spins for longer than the test needs.
    meter = EstimateMeter(cores=2, active_watts_per_core=5.0, idle_watts_per_core=0.0)
    child = _busy_child(600)
    try:
        track_processes([child.pid])
        with meter.window() as measurement:
            _spin_until_it_spent(child.pid, 0.3)
        assert measurement.joules >= 5.0 * 0.3 - 1e-9  # at least the child's 0.3 s in the window
        untrack_processes([child.pid])
        with meter.window() as untracked:
            _spin_until_it_spent(child.pid, 0.2)  # the child keeps spinning, untracked
        assert untracked.joules < 5.0 * 0.1  # counted, its 0.2 s would be 1 J
    finally:
        untrack_processes([child.pid])
        child.kill()
        child.wait()
    assert process_cpu_seconds(child.pid) == 0.0  # gone: nothing more to count
