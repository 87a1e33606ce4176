"""CPU time: this candidate's (its process, finished children and tracked live processes), and
the whole machine's by kind (/proc/stat), which tells whether a CPU window had the cores to itself;
under a container's CPU quota its cgroup's counters tell that instead (cgroup_cpu.py).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optimizer.measure.cgroup_cpu import QuotaCpu, quota_cpu

PROC_STAT = Path("/proc/stat")
# A CPU window in which the hypervisor ran something else for this share of the CPU time the VM
# wanted (busy + steal) is flagged: the candidate ran slowed, so its latency and energy figures are
# not this machine's own. (Quiet stream runs on the 2-vCPU Intel VM, 2026-12-06: 0.0-2.7% of all
# CPU time, the share this flag used to take.)
STEAL_FLAG = 0.05
# ... once the stolen time is at least this share of all CPU time in the window: a window in which
# the VM hardly ran (idle power is measured asleep) has a few jiffies of each, so any share.
STEAL_FLOOR = 0.01
# Likewise a window in which other processes of this machine used this share of its CPU time: they
# competed with the candidate for the cores (and RAPL counts their energy as its own).
OTHERS_FLAG = 0.10
# Under a quota: a window in which this cgroup's tasks waited for a CPU this share of the time, beyond
# what the quota's throttling explains (the candidate's own demand over the quota is this target's
# capacity, not a disturbance). Not calibrated on a container host: the share OTHERS_FLAG takes.
STALL_FLAG = 0.10
# Before a disturbed window is measured again, the CPU is sampled for this long at a time, up to
# QUIET_WAIT_SECONDS, until a sample is quiet: a retry started at once ran inside the same
# disturbance (a 3 s on / 3 s off competing process: 5 of 5 immediate retries flagged again).
QUIET_SAMPLE_SECONDS = 0.5
QUIET_WAIT_SECONDS = 10.0

# Live processes whose work belongs to this one's candidate (a layout's ranks): the estimate counts
# their CPU time too. Finished children are in RUSAGE_CHILDREN already.
_TRACKED: set[int] = set()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CLOCK: Callable[[], float] = time.monotonic  # the wall time of a quota's readings


def track_processes(pids: list[int]) -> None:
    """Count these live processes' CPU time in every estimate window until untracked."""
    _TRACKED.update(pids)


def untrack_processes(pids: list[int]) -> None:
    _TRACKED.difference_update(pids)


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and the tracked live processes."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total + sum(process_cpu_seconds(pid) for pid in sorted(_TRACKED))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and of its children it has waited for (0 once it
    is gone), from /proc/<pid>/stat. The children's (a rank's workers) count as RUSAGE_CHILDREN
    counts them once this process reaps it: left out, they were missing while it lived and all
    landed in the window that reaped it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    # utime, stime, cutime, cstime: fields 14 to 17
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies (1/USER_HZ s) of every CPU since boot, from /proc/stat's first line."""

    steal: int  # the VM's vCPUs waited while the hypervisor ran something else
    busy: int  # user, nice, system, irq, softirq: work of any process here (guests inside user)
    total: int
    # The counters of a cgroup CPU quota below the CPUs this process may run on (which make the
    # others' busy time above no competition), None without one; a reading's clock is no part of
    # what it equals.
    quota: QuotaCpu | None = field(default=None, compare=False)


def cpu_times() -> CpuTimes | None:
    """The CPU time by kind of the CPUs this process may run on (its affinity: in a container
    pinned to a few of a host's cores, the others' work is not competition); all CPUs together
    where the affinity is unknown or /proc/stat lacks one of its lines. None where /proc/stat
    cannot be read or has no steal column (not Linux, or a kernel before 2.6.11). Carries the
    quota's counters where one binds (an unknown affinity cannot tell)."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    rows = {line.split(maxsplit=1)[0]: line.split() for line in lines if line.startswith("cpu")}
    allowed = allowed_cpus()
    wanted = [f"cpu{index}" for index in sorted(allowed or ())]
    picked = [rows[name] for name in wanted if name in rows]
    if not wanted or len(picked) < len(wanted):
        picked = [rows["cpu"]] if "cpu" in rows else []
    if not picked or any(len(row) < 9 for row in picked):
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    sums = [sum(int(row[column]) for row in picked) for column in range(1, 9)]
    user, nice, system, idle, iowait, irq, softirq, steal = sums
    busy = user + nice + system + irq + softirq
    quota = quota_cpu(len(allowed), CLOCK) if allowed else None
    return CpuTimes(steal=steal, busy=busy, total=busy + idle + iowait + steal, quota=quota)


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on; None where the platform does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def shared_cpu_warnings(
    before: CpuTimes | None, after: CpuTimes | None, own_cpu_seconds: float, package_energy: bool = False
) -> list[str]:
    """What a CPU window between two readings says about the candidate not having the CPU to itself:
    the hypervisor took at least STEAL_FLAG of the CPU time this VM's processes wanted (ran, or
    waited for as steal: a window that is half idle would otherwise halve the share) and at least
    STEAL_FLOOR of all of it, or other processes used at least OTHERS_FLAG of the machine's CPU time.
    Under a quota that binds (both readings' `quota`) the others are judged by the quota's counters
    (`quota_warnings`), unless the meter reads the whole package's energy (`package_energy`, RAPL):
    then every process on the host is in its figure, and /proc/stat still decides."""
    if before is None or after is None or after.total <= before.total:
        return []
    warnings = []
    total = after.total - before.total
    stolen, busy = after.steal - before.steal, after.busy - before.busy
    steal = stolen / (busy + stolen) if busy + stolen > 0 else 0.0
    if steal >= STEAL_FLAG and stolen >= STEAL_FLOOR * total:
        warnings.append(
            f"the hypervisor took {steal:.0%} of the CPU time this VM wanted during the window (steal, "
            "/proc/stat): the candidate ran slowed"
        )
    quota = (before.quota, after.quota) if before.quota and after.quota else None
    if quota and not package_energy:
        return warnings + quota_warnings(*quota, own_cpu_seconds)
    others = max(busy / CLOCK_TICKS - own_cpu_seconds, 0.0) / (total / CLOCK_TICKS)
    if others >= OTHERS_FLAG:
        why = (
            "RAPL counts their energy as the candidate's" if quota else "they competed with it for the cores"
        )
        warnings.append(
            f"other processes used {others:.0%} of this machine's CPU time during the window (/proc/stat "
            f"less the candidate's own): {why}"
        )
    return warnings


def quota_warnings(before: QuotaCpu, after: QuotaCpu, own_cpu_seconds: float) -> list[str]:
    """What a window says under a CPU quota: other processes under it used at least OTHERS_FLAG of
    what it allowed (cpus x wall time), or this cgroup's tasks waited for a CPU at least STALL_FLAG
    of the wall time beyond the throttled time (which is at least the wall time the quota held them
    back: an own demand over the quota is not flagged; another's is, as its usage)."""
    wall = after.seconds - before.seconds
    if wall <= 0:
        return []
    warnings = []
    used = (after.usage_usec - before.usage_usec) / 1e6
    others = max(used - own_cpu_seconds, 0.0) / (after.cpus * wall)
    if others >= OTHERS_FLAG:
        warnings.append(
            f"other processes under this process's CPU quota ({after.cpus:g} CPUs) used {others:.0%} of it "
            "during the window (cgroup cpu.stat usage_usec less the candidate's own): they competed with "
            "it for the quota"
        )
    stalled = (after.stall_usec - before.stall_usec) - (after.throttled_usec - before.throttled_usec)
    waited = max(stalled / 1e6, 0.0) / wall
    if waited >= STALL_FLAG:
        warnings.append(
            f"tasks of this process's cgroup waited for a CPU {waited:.0%} of the window beyond the quota's "
            'throttling (cgroup cpu.pressure "some" less cpu.stat throttled_usec): other work on this host '
            "held the cores"
        )
    return warnings


def quota_has_room(before: CpuTimes, after: CpuTimes) -> bool:
    """Whether the CPUs this process may run on stayed idle for at least its quota between two
    readings: an idle cgroup's stall time cannot show others holding the cores it would want."""
    if before.quota is None or after.quota is None:
        return True
    wall = after.quota.seconds - before.quota.seconds
    idle = (after.total - before.total) - (after.busy - before.busy) - (after.steal - before.steal)
    return wall <= 0 or idle / CLOCK_TICKS >= after.quota.cpus * wall


def wait_for_quiet_cpu(
    limit_seconds: float = QUIET_WAIT_SECONDS,
    sample_seconds: float = QUIET_SAMPLE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    package_energy: bool = False,
) -> float | None:
    """Sample the CPU while this process waits until a sample of `sample_seconds` is unflagged by
    `shared_cpu_warnings` (for a meter of `package_energy` or not) and, under a quota, left it
    room (`quota_has_room`), at most `limit_seconds`. Returns the seconds waited, or None when it
    stayed busy (or /proc/stat cannot tell). While the VM idles the hypervisor takes little it
    wanted, so this waits out other processes; a steal episode gets the time to pass."""
    waited = 0.0
    while waited < limit_seconds:
        before, own = cpu_times(), own_cpu_seconds()
        sleep(sample_seconds)
        after = cpu_times()
        if before is None or after is None:
            return None
        waited += sample_seconds
        warnings = shared_cpu_warnings(before, after, own_cpu_seconds() - own, package_energy)
        if not warnings and (package_energy or quota_has_room(before, after)):
            return waited
    return None
