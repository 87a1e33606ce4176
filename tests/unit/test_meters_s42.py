"""Energy meters on faked counters: an NVML energy counter that does not advance, and RAPL counters
that wrap more than once in one window."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer.measure import energy
from optimizer.measure.energy import NvmlMeter, RaplMeter, measure_idle_watts


class CounterNvml:
    """One board drawing a steady 300 W whose energy counter reads what `energy_mj` returns."""

    NVMLError = RuntimeError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FI_DEV_POWER_INSTANT = 186

    def __init__(self, energy_mj: Any) -> None:
        self.energy_mj = energy_mj

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return int(self.energy_mj())

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 300_000

    def nvmlDeviceGetFieldValues(self, handle: int, fields: list[int]) -> list[Any]:
        return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=300_000))]

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 50

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return 1980


def _nvml_meter(energy_mj: Any) -> NvmlMeter:
    return NvmlMeter([0], poll_seconds=0.01, nvml=CounterNvml(energy_mj), cuda_uuid=lambda index: None)


def test_an_nvml_counter_that_does_not_advance_is_replaced_by_polled_power() -> None:
    """A board drawing 300 W whose counter stays put read 0 J (0 W idle, 0 tok/J, unflagged)."""
    meter = _nvml_meter(lambda: 123_456_789)
    assert meter.source == "nvml"
    idle = measure_idle_watts(meter, 1.1)  # the idle window, measured before any candidate, finds it
    assert idle == pytest.approx(300.0, rel=0.05)
    assert meter.source == "nvml-power-poll" and not meter.has_counter
    with meter.window() as window:
        time.sleep(0.4)
    assert window.source == "nvml-power-poll"
    assert window.joules == window.polled_joules
    assert window.joules == pytest.approx(300.0 * window.seconds, rel=0.05)


def test_the_window_that_finds_a_stuck_counter_says_so_and_reads_polled_power() -> None:
    meter = _nvml_meter(lambda: 5_000)
    with meter.window() as window:
        time.sleep(1.1)
    assert window.source == "nvml-power-poll"
    assert window.joules == pytest.approx(300.0 * window.seconds, rel=0.05)
    assert any("NVML energy counter advanced 0 mJ" in w for w in window.warnings)


def test_an_nvml_counter_that_went_back_is_not_negative_energy() -> None:
    """A driver reload restarts the counter from 0: the window would read minus the board's total."""
    readings = iter([10_000_000, 10_000_000, 2_000])  # the probe, the window's start, its end
    meter = _nvml_meter(lambda: next(readings))
    with meter.window() as window:
        time.sleep(1.1)
    assert window.joules == pytest.approx(300.0 * window.seconds, rel=0.05)
    assert window.source == "nvml-power-poll"


def test_a_counter_unchanged_within_its_update_period_is_kept() -> None:
    """Within a second an unchanged counter may be its granularity (or a slower board's), not a fault."""
    meter = _nvml_meter(lambda: 123_456_789)
    with meter.window() as window:
        time.sleep(0.4)
    assert meter.source == window.source == "nvml" and meter.has_counter
    assert window.joules == 0.0


def test_an_advancing_nvml_counter_is_read_as_before() -> None:
    start = time.perf_counter()
    meter = _nvml_meter(lambda: 1_000_000 + round((time.perf_counter() - start) * 300_000))
    with meter.window() as window:
        time.sleep(0.4)
    assert meter.source == window.source == "nvml"
    assert not any("counter advanced" in w for w in window.warnings)


def test_rapl_counters_that_wrap_more_than_once_in_a_window_are_counted_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AMD's package counter wraps at 65.7 kJ (32 bits of 15.3 uJ): every 219 s at 300 W. A window
    read only at its edges lost every whole wrap (180 kJ over 600 s read 48.6 kJ)."""
    wrap = 65_712_999_613
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "name").write_text("package-0\n")
    (domain / "max_energy_range_uj").write_text(f"{wrap}\n")

    def counter(microjoules: int) -> None:  # replaced whole, as sysfs reads are
        (domain / "next").write_text(f"{microjoules % wrap}\n")
        (domain / "next").replace(domain / "energy_uj")

    counter(1_000)
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    meter = RaplMeter(RaplMeter.package_domains())
    meter.poll_seconds = 0.001
    reads = 0
    read = meter._read

    def counted() -> list[int]:
        nonlocal reads
        reads += 1
        return read()

    monkeypatch.setattr(meter, "_read", counted)
    with meter.window() as window:
        for step in range(1, 61):  # 300 W for 600 s, in 10 s steps
            counter(1_000 + step * 3_000_000_000)
            seen, give_up = reads, time.perf_counter() + 1.0
            while reads < seen + 2 and time.perf_counter() < give_up:  # a whole read after the step
                time.sleep(0.0005)
    assert window.joules == pytest.approx(180_000.0)


def test_rapl_reads_between_a_windows_edges_do_not_change_a_short_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "max_energy_range_uj").write_text("1000000000\n")
    (domain / "energy_uj").write_text("999000000\n")
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    meter = RaplMeter(RaplMeter.package_domains())
    meter.poll_seconds = 0.001
    with meter.window() as window:
        time.sleep(0.02)  # read unchanged between the edges
        (domain / "next").write_text("1000000\n")  # wrapped once: 1 J to the top, 1 J after zero
        (domain / "next").replace(domain / "energy_uj")
        time.sleep(0.02)
    assert window.joules == pytest.approx(2.0)
