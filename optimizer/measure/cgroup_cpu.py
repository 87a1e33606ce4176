"""The CPU a container's quota gives this process, read from its cgroup v2 files.

Under a CPU quota (cpu.max) without a cpuset narrowing it, /proc/stat is the whole host's: other
containers' work on other cores is busy time there, though the candidate never lacked a core. What
shows whether it did is its own cgroup's: the CPU time spent under the quota (cpu.stat usage_usec)
and the time its tasks waited for a CPU (cpu.pressure "some", pressure stall information). That
wait includes the quota's throttling (tasks held back once the quota is spent), which cpu.stat
counts apart (throttled_usec).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from optimizer import host_cpu
from optimizer.host_cpu import cgroup_v2_files, cgroup_v2_quota, read_or_empty


@dataclass(frozen=True)
class QuotaCpu:
    """One reading of the quota's counters. Units: CPUs, microseconds, seconds."""

    cpus: float  # the tightest cpu.max, e.g. 1.5 for "150000 100000"
    usage_usec: int  # cpu.stat of the cgroup that sets it: every process under the quota
    # ... and the time it was throttled, summed over the CPUs its tasks were queued on (so it is at
    # least the wall time it held them back)
    throttled_usec: int
    stall_usec: int  # cpu.pressure "some" of this process's own cgroup: a task of it waited for a CPU
    seconds: float  # the monotonic clock at the reading


def quota_cpu(allowed_cpus: int, clock: Callable[[], float]) -> QuotaCpu | None:
    """The quota's counters where a cgroup v2 CPU quota is below the `allowed_cpus` this process
    may run on (its affinity): only then do other processes' work on the host's other cores not
    compete with it. None without such a quota, or where the counters cannot be read (cgroup v1;
    pressure stall information off, which fails the read): /proc/stat decides then, as before."""
    root = host_cpu.ROOT  # read at each call: tests lay out a fake root
    quota = cgroup_v2_quota(root)
    if quota is None:
        return None
    cpus, folder = quota
    if cpus >= allowed_cpus:  # the cores bind first: /proc/stat over them is right
        return None
    stat = _keyed(read_or_empty(folder / "cpu.stat"))
    pressure = cgroup_v2_files("cpu.pressure", root)
    stall = _some_total(read_or_empty(pressure[0])) if pressure else None
    if "usage_usec" not in stat or stall is None:
        return None
    return QuotaCpu(cpus, stat["usage_usec"], stat.get("throttled_usec", 0), stall, clock())


def _keyed(text: str) -> dict[str, int]:
    """cpu.stat's "key value" lines."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if (number := _count(value)) is not None:
            values[key] = number
    return values


def _some_total(text: str) -> int | None:
    """The "some" line's total (microseconds) of a cpu.pressure file."""
    for line in text.splitlines():
        kind, *fields = line.split() or [""]
        if kind == "some":
            totals = [_count(f.removeprefix("total=")) for f in fields if f.startswith("total=")]
            return totals[0] if totals else None
    return None


def _count(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:  # "max", or an empty read
        return None
    return value if value >= 0 else None
