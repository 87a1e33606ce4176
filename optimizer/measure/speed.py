"""The cores' speed just before an energy window, from a fixed CPU probe.

A candidate measured on slowed cores gets slower latencies and fewer tokens per joule that are not
its own. Cores can be slowed in two ways. Time-sharing (the hypervisor running another VM, other
processes here) is measured over the whole window by the CPU meters, from /proc/stat (steal, and
busy time that is not the candidate's: cpu_time.py). A core that runs slower while it runs (a host
lowering its clock, a busy hyperthread sibling, shared caches) shows in neither. This probe times
that: before each window (the engine idle between batches or runs of a stream) every core this
process may use hashes the same in-cache buffer, and the rate is taken per second of each
thread's own CPU time, so a thread waiting for a core does not lower it. The report holds each
window's rate to the run's median.

On the project's 2-vCPU VM (2026-12-06), one thread's hashes timed by the wall clock fell below
0.8x of their median in 34% of 362 samples over 40 s (down to 0.14x): the host preempted the vCPUs
(steal was 1.8% of all CPU time, with the VM busy roughly 3.5% of it: estimated from the
hashing's size, not read). Per CPU second the same hashes fell
below 0.8x in 1% (down to 0.64x) (evals/results/2026-12-06-cpu-speed-probe/).

What it cannot see: contention for memory bandwidth (the buffer stays in the core's cache), which
slows a bandwidth-bound decode step without slowing the probe.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import statistics
import threading
import time

from optimizer.host_cpu import usable_cores

log = logging.getLogger(__name__)

PROBE_BUFFER_BYTES = 1 << 20  # 1 MiB: inside one core's L2, so the probe times the core, not DRAM
PROBE_PASSES = 16  # per thread over the buffer: ~16 ms per repeat at ~1 GiB/s per core (SHA extensions)
PROBE_REPEATS = 3  # the median of three: one disturbed repeat does not decide
# A probe below this fraction of the one it is held to (the run's median; a recipe's, in verify)
# ran on slowed cores. (2-vCPU Intel VM, 2026-12-06: 1-2.5% of quiet probes fell below it.)
SLOW_PROBE = 0.80


def probe_threads() -> int:
    """The cores this process may use: its affinity (which `taskset` or a cpuset narrows), no more
    than a container's CPU quota (one thread per host core would time the quota, not the cores)."""
    return usable_cores()


def cpu_probe_mibps(threads: int | None = None) -> float:
    """MiB hashed per second of CPU time, the mean of `threads` threads (default: one per core this
    process may use) hashing at once: the median of PROBE_REPEATS repeats. ~50 ms on 2 vCPUs."""
    count = threads or probe_threads()
    repeats = []
    for _ in range(PROBE_REPEATS):
        rates: list[float] = []
        workers = [threading.Thread(target=_hash, args=(PROBE_PASSES, rates)) for _ in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        repeats.append(statistics.fmean(rates))
    return statistics.median(repeats)


@functools.cache
def _buffer() -> bytes:
    return random.Random(0).randbytes(PROBE_BUFFER_BYTES)


def _hash(passes: int, rates: list[float]) -> None:
    """Appends this thread's MiB per CPU second. hashlib releases the GIL while it hashes a buffer
    this large, so the threads run on every core at once."""
    buffer, digest = _buffer(), hashlib.sha256()
    start = time.thread_time()
    for _ in range(passes):
        digest.update(buffer)
    seconds = max(time.thread_time() - start, 1e-9)
    rates.append(passes * len(buffer) / 2**20 / seconds)


_probes_seen: list[float] = []  # this process's probes so far


def warn_if_slow(rate: float) -> None:
    """Say in the log, as it happens, that a window is about to be measured on cores slower than
    this process's probes so far (the report holds every window to the whole run's median)."""
    _probes_seen.append(rate)
    usual = statistics.median(_probes_seen)
    if rate < SLOW_PROBE * usual:
        log.warning(
            "the CPU probe ran at %.2fx its median so far before this window (the cores run slower: "
            "a host's clock, a busy sibling thread): the window's latency and energy figures are slowed too",
            rate / usual,
        )
