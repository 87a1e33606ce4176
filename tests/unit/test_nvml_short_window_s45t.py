"""A power-poll meter's short window (s45): on a board without the NVML energy counter the
polled integral is the reading, and a window that closed before the poll thread's first sample
had one reading (the end's): no integral, and the window read 0 J without a word. Now the
window's start is read before the thread starts, so every window has its start and its end."""

from __future__ import annotations

import threading

import pytest

from optimizer.measure import nvml_device
from optimizer.measure.energy import NvmlMeter
from optimizer.measure.nvml_device import PowerPoll


class CounterlessNvml:
    """One board at 200 W, without an energy counter (pre-Volta)."""

    NVMLError = RuntimeError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FI_DEV_POWER_INSTANT = None

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 200_000

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 50

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return 1980


class LateThread(threading.Thread):
    """A poll thread first scheduled after its window closed (a busy host, the GIL held)."""

    def start(self) -> None:
        return None

    def join(self, timeout: float | None = None) -> None:
        super().start()  # the stop is already set: its loop samples nothing
        super().join(timeout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001  # a millisecond passes at every read of the clock
        return self.now


@pytest.fixture
def late_poll_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_device.threading, "Thread", LateThread)


def test_a_short_counterless_window_is_never_read_as_zero_joules(late_poll_thread: None) -> None:
    meter = NvmlMeter([0], nvml=CounterlessNvml(), clock=FakeClock(), cuda_uuid=lambda index: None)
    assert meter.source == "nvml-power-poll"
    with meter.window() as window:
        pass
    assert window.seconds > 0
    assert window.joules == pytest.approx(200.0 * window.seconds)
    assert window.polled_joules == window.joules


def test_a_poll_reads_the_windows_start_before_its_thread(late_poll_thread: None) -> None:
    clock = FakeClock()
    with PowerPoll(lambda: 50.0, clock, poll_seconds=10.0) as power:
        start = power.samples[0][0]
    power.sample()
    assert [w for _, w in power.samples] == [50.0, 50.0]
    assert power.joules(start, clock.now, required=True) == pytest.approx(50.0 * (clock.now - start))


def test_a_required_window_with_too_few_readings_raises_without_failed_reads() -> None:
    power = PowerPoll(lambda: 50.0, FakeClock(), poll_seconds=10.0)
    power.samples = [(1.0, 50.0)]  # one reading: no integral, and no read failed
    with pytest.raises(RuntimeError, match="1 NVML power reading.*too few"):
        power.joules(0.5, 2.0, required=True)
    assert power.joules(0.5, 2.0, required=False) is None
