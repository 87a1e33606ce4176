"""NVML reads that fail during a window (s45): an NVMLError from nvmlDeviceGetPowerUsage killed
the meter's poll thread (an uncaught thread exception), and the window went on from the samples
it had: a cross-check, or a power-poll meter's whole reading, integrated from the first few
readings, without a word. At the window's end, the same error (or one reading the temperature or
the SM clock) failed the candidate although the energy counter had read it. Now a failed read is
skipped, as RAPL's poll does, and the window says how long its power went unread. A fake
pynvml: one board whose power steps from 100 W to 400 W."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer.measure.energy import NvmlMeter


class FlakyNvml:
    NVMLError = RuntimeError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FI_DEV_POWER_INSTANT = None  # nvmlDeviceGetPowerUsage is the only power reading

    def __init__(self, has_counter: bool = True) -> None:
        self.has_counter = has_counter
        self.step_at = float("inf")  # perf_counter time the power steps up
        self.fail_power: set[int] = set()  # which nvmlDeviceGetPowerUsage calls fail (1-based)
        self.power_calls = 0
        self.fail_state = False

    def watts(self, at: float) -> float:
        return 400.0 if at >= self.step_at else 100.0

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.has_counter:
            raise self.NVMLError("Not Supported")
        now = time.perf_counter()  # the energy 100 W since 0, plus 300 W more since the step
        return int(1000 * (100.0 * now + 300.0 * max(now - self.step_at, 0.0)))

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self.power_calls += 1
        if self.power_calls in self.fail_power:
            raise self.NVMLError("Unknown Error")
        return int(1000 * self.watts(time.perf_counter()))

    def nvmlDeviceGetFieldValues(self, handle: int, fields: list[int]) -> list[Any]:
        return [SimpleNamespace(nvmlReturn=1)]

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        if self.fail_state:
            raise self.NVMLError("Unknown Error")
        return 50

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        if self.fail_state:
            raise self.NVMLError("Unknown Error")
        return 1980


@pytest.fixture
def thread_errors() -> Any:
    """Exceptions that end a thread (the poll thread's would be printed and lost)."""
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    yield errors
    threading.excepthook = previous


def _meter(nvml: FlakyNvml) -> NvmlMeter:
    return NvmlMeter([0], poll_seconds=0.01, nvml=nvml, cuda_uuid=lambda index: None)


def test_a_failed_poll_is_skipped_and_the_window_says_so(thread_errors: list[Any]) -> None:
    nvml = FlakyNvml()
    meter = _meter(nvml)
    nvml.fail_power = {3}
    with meter.window() as window:
        nvml.step_at = time.perf_counter() + 0.15
        time.sleep(0.6)
    assert not thread_errors
    expected = 100.0 * 0.15 + 400.0 * (window.seconds - 0.15)
    assert window.joules == pytest.approx(expected, rel=0.05)
    # the poller went on past the step: its integral sees the 400 W
    assert window.polled_joules == pytest.approx(expected, rel=0.1)
    [unread] = [w for w in window.warnings if "went unread" in w]
    assert "NVML power could not be read at 1 of" in unread and "RuntimeError: Unknown Error" in unread


def test_a_power_poll_meter_reads_on_past_a_failed_poll(thread_errors: list[Any]) -> None:
    nvml = FlakyNvml(has_counter=False)
    meter = _meter(nvml)
    assert meter.source == "nvml-power-poll"
    nvml.fail_power = {nvml.power_calls + 2}
    with meter.window() as window:
        nvml.step_at = time.perf_counter() + 0.15
        time.sleep(0.6)
    assert not thread_errors
    assert window.joules == pytest.approx(100.0 * 0.15 + 400.0 * (window.seconds - 0.15), rel=0.1)
    assert any("went unread" in w for w in window.warnings)


def test_failed_reads_at_the_windows_end_do_not_fail_a_counted_window() -> None:
    nvml = FlakyNvml()
    meter = _meter(nvml)
    with meter.window() as window:
        time.sleep(0.2)
        nvml.fail_power = set(range(1, 10_000))  # every power read from here on
        nvml.fail_state = True
    assert window.joules == pytest.approx(100.0 * window.seconds, rel=0.05)
    assert window.temperature_c is None and window.sm_clock_mhz is None
    assert any("went unread" in w for w in window.warnings)


def test_a_power_poll_window_with_no_reading_fails() -> None:
    nvml = FlakyNvml(has_counter=False)
    meter = _meter(nvml)
    nvml.fail_power = set(range(1, 10_000))
    refused = pytest.raises(RuntimeError, match="NVML power could not be read at .*too few readings")
    with refused, meter.window():
        time.sleep(0.05)
