"""The cores' speed probe timed before each energy window."""

from __future__ import annotations

import itertools
import threading

import pytest

from optimizer.measure import speed


def test_the_rate_is_per_cpu_second_averaged_over_threads_and_the_median_of_repeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each thread hashes PROBE_PASSES MiB and divides by its own CPU seconds; a repeat is the
    threads' mean; one disturbed repeat (the slow one) does not decide."""
    seconds = iter([0.5, 0.5, 4.0, 4.0, 0.25, 0.25])  # per thread, per repeat: 32, 4 and 64 MiB/s
    lock = threading.Lock()
    ticks = itertools.count()
    spent = [0.0]

    def thread_time() -> float:  # the end of each thread's hashing advances by that thread's seconds
        with lock:
            if next(ticks) % 2:
                spent[0] += next(seconds)
            return spent[0]

    monkeypatch.setattr(speed, "_hash", _serialized(speed._hash, threading.Lock()))
    monkeypatch.setattr(speed.time, "thread_time", thread_time)
    assert speed.cpu_probe_mibps(threads=2) == pytest.approx(speed.PROBE_PASSES / 0.5)


def _serialized(hash_fn, lock):  # type: ignore[no-untyped-def]
    """One thread at a time, so that the fake clock's start and end ticks pair up per thread."""

    def run(passes: int, rates: list[float]) -> None:
        with lock:
            hash_fn(passes, rates)

    return run


def test_the_probe_hashes_on_every_thread_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[tuple[int, int]] = []
    real = speed._hash

    def recording(passes: int, rates: list[float]) -> None:
        hashed.append((threading.get_ident(), passes))
        real(passes, rates)

    monkeypatch.setattr(speed, "_hash", recording)
    assert speed.cpu_probe_mibps(threads=3) > 0
    assert len(hashed) == 3 * speed.PROBE_REPEATS
    assert {passes for _, passes in hashed} == {speed.PROBE_PASSES}
    assert threading.get_ident() not in {ident for ident, _ in hashed}  # not on the caller's thread


def test_a_probe_below_the_median_so_far_is_logged_as_it_happens(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(speed, "_probes_seen", [])
    for rate in (1000.0, 1050.0, 990.0, 1020.0, 700.0):
        speed.warn_if_slow(rate)
    slow = [r.getMessage() for r in caplog.records if "CPU probe" in r.getMessage()]
    assert len(slow) == 1 and slow[0].startswith("the CPU probe ran at 0.70x its median so far")


def test_the_probe_runs_no_more_threads_than_a_containers_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a 1-CPU container on a bigger host, a thread per host core would time the quota."""
    from optimizer import host_cpu

    monkeypatch.setattr(host_cpu.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(host_cpu, "cgroup_cpus", lambda root=host_cpu.ROOT: 1)
    assert speed.probe_threads() == 1
    monkeypatch.setattr(host_cpu, "cgroup_cpus", lambda root=host_cpu.ROOT: None)
    assert speed.probe_threads() == 4
