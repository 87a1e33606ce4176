"""RAPL's poll thread through read errors: a failed read between a window's edges is skipped, not
the end of polling, and the window says it went unread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from optimizer.measure import energy
from optimizer.measure.energy import RaplMeter

WRAP = 65_712_999_613  # AMD's package counter: 32 bits of 15.3 uJ


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """One package domain; returns what sets its counter (microjoules, wrapped as RAPL does)."""
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "name").write_text("package-0\n")
    (domain / "max_energy_range_uj").write_text(f"{WRAP}\n")

    def counter(microjoules: int) -> None:  # replaced whole, as sysfs reads are
        (domain / "next").write_text(f"{microjoules % WRAP}\n")
        (domain / "next").replace(domain / "energy_uj")

    counter(1_000)
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    return counter


def _flaky_meter(
    fails: Callable[[int], bool], monkeypatch: pytest.MonkeyPatch
) -> tuple[RaplMeter, list[int]]:
    """A meter polling every ms whose n-th read (1: the window's start) raises EIO where `fails(n)`."""
    meter = RaplMeter(RaplMeter.package_domains(), poll_seconds=0.001)
    read, calls = meter._read, [0]

    def flaky() -> list[int]:
        calls[0] += 1
        if fails(calls[0]):
            raise OSError(5, "Input/output error")
        return read()

    monkeypatch.setattr(meter, "_read", flaky)
    return meter, calls


def test_a_failed_rapl_read_mid_window_does_not_stop_the_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread died on its first failed read: 180 kJ over three wraps read 48.6 kJ, unflagged."""
    counter = _package(tmp_path, monkeypatch)
    meter, calls = _flaky_meter(lambda n: n == 2, monkeypatch)  # the first poll fails
    threads = threading.active_count()
    with meter.window() as window:
        for step in range(1, 7):  # 30 kJ a step: below one wrap between reads
            counter(1_000 + step * 30_000_000_000)
            seen, give_up = calls[0], time.perf_counter() + 0.5
            while calls[0] < seen + 2 and time.perf_counter() < give_up:  # a whole read after the step
                time.sleep(0.0005)
    assert window.joules == pytest.approx(180_000.0)
    unread = [w for w in window.warnings if "could not be read" in w]
    assert len(unread) == 1 and "at 1 of " in unread[0] and "Input/output error" in unread[0]
    assert threading.active_count() == threads  # the poller ended with its window


def test_a_window_whose_polls_all_fail_says_how_long_it_went_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _package(tmp_path, monkeypatch)
    broken = [False]
    meter, _ = _flaky_meter(lambda n: broken[0], monkeypatch)
    with meter.window() as window:
        broken[0] = True  # every poll from the window's start on
        time.sleep(0.05)
        counter(1_000 + 2_000_000)  # 2 J, within one wrap: the edges alone still read it
        broken[0] = False  # the end read
    assert window.joules == pytest.approx(2.0)
    (unread,) = [w for w in window.warnings if "could not be read" in w]
    gap = float(unread.split(": ")[-1].split(" s went unread")[0].split()[-1])
    assert gap >= 0.05 and "wraps every" in unread


def test_a_window_whose_reads_all_succeed_has_no_unread_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _package(tmp_path, monkeypatch)
    meter = RaplMeter(RaplMeter.package_domains(), poll_seconds=0.001)
    with meter.window() as window:
        time.sleep(0.01)
        counter(1_000 + 5_000_000)
        time.sleep(0.01)
    assert window.joules == pytest.approx(5.0)
    assert not any("could not be read" in w for w in window.warnings)
