"""Under a container's CPU quota (cgroup v2 cpu.max, no cpuset narrowing it) /proc/stat is the whole
host's: a CPU window is judged by the quota's own counters (cpu.stat usage and throttling, cpu.pressure
"some" stall), not by other containers' busy time on other cores. All files are fakes under tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from optimizer import host_cpu
from optimizer.measure import cpu_time, energy
from optimizer.measure.cgroup_cpu import QuotaCpu, quota_cpu
from optimizer.measure.energy import EstimateMeter, Measurement, RaplMeter, undisturbed

TICK = cpu_time.CLOCK_TICKS
HOST_CPUS = 8
WINDOW = 10.0  # seconds of wall time per window


@dataclass
class Host:
    """An 8-CPU host's /proc/stat and this process's cgroup v2 files (its own cgroup is the mount's
    root, as in a container with a cgroup namespace), advanced a window at a time."""

    root: Path
    busy: float = 100.0  # CPU seconds per CPU since boot
    idle: float = 900.0
    usage: float = 50.0  # the quota cgroup's cpu.stat usage_usec, seconds
    stall: float = 0.0  # cpu.pressure some total, seconds
    throttled: float = 0.0  # cpu.stat throttled_usec, seconds

    def write(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def publish(self) -> None:
        row = f"{round(self.busy * TICK)} 0 0 {round(self.idle * TICK)} 0 0 0 0 0 0"
        all_cpus = (
            f"{round(self.busy * TICK) * HOST_CPUS} 0 0 {round(self.idle * TICK) * HOST_CPUS} 0 0 0 0 0 0"
        )
        self.write("proc/stat", f"cpu  {all_cpus}\n" + "".join(f"cpu{i} {row}\n" for i in range(HOST_CPUS)))
        self.write(
            "sys/fs/cgroup/cpu.stat",
            f"usage_usec {round(self.usage * 1e6)}\nuser_usec 0\nsystem_usec 0\nnr_periods 100\n"
            f"nr_throttled {5 if self.throttled else 0}\nthrottled_usec {round(self.throttled * 1e6)}\n",
        )
        self.write(
            "sys/fs/cgroup/cpu.pressure",
            f"some avg10=0.00 avg60=0.00 avg300=0.00 total={round(self.stall * 1e6)}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )

    def advance(self, host_busy: float, usage: float, stall: float = 0.0, throttled: float = 0.0) -> None:
        """One window: `host_busy` CPU seconds busy across the host (ours included) of its
        HOST_CPUS x WINDOW, `usage` under the quota, `stall` and `throttled` seconds."""
        self.busy += host_busy / HOST_CPUS
        self.idle += (HOST_CPUS * WINDOW - host_busy) / HOST_CPUS
        self.usage += usage
        self.stall += stall
        self.throttled += throttled
        self.publish()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A container with a 2-CPU quota that may run on all 8 of the host's CPUs; the clock steps
    WINDOW seconds at each reading."""
    fake = Host(tmp_path)
    fake.write("proc/self/cgroup", "0::/\n")
    fake.write("sys/fs/cgroup/cpu.max", "200000 100000\n")
    fake.publish()
    monkeypatch.setattr(cpu_time, "PROC_STAT", tmp_path / "proc/stat")
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: set(range(HOST_CPUS)))
    monkeypatch.setattr(host_cpu, "ROOT", tmp_path)
    clock = iter(range(0, 10_000, int(WINDOW)))
    monkeypatch.setattr(cpu_time, "CLOCK", lambda: float(next(clock)))
    return fake


def _own(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The candidate's own CPU seconds over the next window."""
    readings = iter([50.0, 50.0 + seconds])
    monkeypatch.setattr(energy, "own_cpu_seconds", lambda: next(readings))


def _rapl(tmp_path: Path) -> RaplMeter:
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "energy_uj").write_text("0")
    (domain / "max_energy_range_uj").write_text("1000000000")
    return RaplMeter([domain])


def _window(meter: EstimateMeter | RaplMeter, host: Host, **counts: float) -> list[str]:
    with meter.window() as measurement:
        host.advance(**counts)
    assert measurement.shared_cpu == measurement.warnings
    return measurement.shared_cpu


ESTIMATE = EstimateMeter(cores=2, active_watts_per_core=5.0, idle_watts_per_core=1.5)


def test_other_containers_on_other_cores_do_not_flag_a_quiet_quota_container(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect: other containers kept 24 of the host's 80 CPU seconds busy (30%, /proc/stat),
    while this cgroup used only the candidate's 10 s, never waited and was never throttled."""
    _own(monkeypatch, 10.0)
    assert _window(ESTIMATE, host, host_busy=34.0, usage=10.0) == []


def test_a_quota_container_whose_tasks_waited_for_a_cpu_is_flagged(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's other work held the cores: a task of this cgroup waited 3 of the 10 s (pressure
    "some") while it was never throttled; 0.5 s of waiting is quiet."""
    _own(monkeypatch, 10.0)
    (flag,) = _window(ESTIMATE, host, host_busy=80.0, usage=10.0, stall=3.0)
    assert flag == (
        "tasks of this process's cgroup waited for a CPU 30% of the window beyond the quota's throttling "
        '(cgroup cpu.pressure "some" less cpu.stat throttled_usec): other work on this host held the cores'
    )
    _own(monkeypatch, 10.0)
    assert _window(ESTIMATE, host, host_busy=80.0, usage=10.0, stall=0.5) == []


def test_throttling_by_the_candidates_own_demand_is_not_flagged(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate wanted more than its 2 CPUs: its tasks waited 4 s, all of it throttled (8 s
    summed over the CPUs they were queued on): that is this target's capacity. Waiting 6 s of which
    2 s throttled is 4 s on a busy host, flagged."""
    _own(monkeypatch, 20.0)
    assert _window(ESTIMATE, host, host_busy=20.0, usage=20.0, stall=4.0, throttled=8.0) == []
    _own(monkeypatch, 20.0)
    (flag,) = _window(ESTIMATE, host, host_busy=80.0, usage=20.0, stall=6.0, throttled=2.0)
    assert flag.startswith("tasks of this process's cgroup waited for a CPU 40% of the window")


def test_other_processes_under_the_quota_are_flagged(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 of the quota's 20 CPU seconds were spent by processes that are not the candidate's (and
    throttled it: not subtracted from their share); 1 s of 20 is quiet."""
    _own(monkeypatch, 10.0)
    (flag,) = _window(ESTIMATE, host, host_busy=15.0, usage=15.0, stall=2.0, throttled=4.0)
    assert flag == (
        "other processes under this process's CPU quota (2 CPUs) used 25% of it during the window "
        "(cgroup cpu.stat usage_usec less the candidate's own): they competed with it for the quota"
    )
    _own(monkeypatch, 10.0)
    assert _window(ESTIMATE, host, host_busy=11.0, usage=11.0) == []


@pytest.mark.parametrize(
    ("files", "affinity"),
    [
        ({"sys/fs/cgroup/cpu.max": "max 100000\n"}, HOST_CPUS),  # no quota: the whole machine
        ({"sys/fs/cgroup/cpu.max": "800000 100000\n"}, 2),  # a cpuset of 2 binds before 8 CPUs
        ({"sys/fs/cgroup/cpu.pressure": None}, HOST_CPUS),  # pressure stall information off
        ({"sys/fs/cgroup/cpu.max": None, "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n"}, HOST_CPUS),  # v1
    ],
)
def test_without_a_quota_the_cgroup_can_judge_proc_stat_decides_as_before(
    host: Host, monkeypatch: pytest.MonkeyPatch, files: dict[str, str | None], affinity: int
) -> None:
    """Other processes' 30% of the CPUs this process may run on is flagged as ever."""
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: set(range(affinity)))
    monkeypatch.setattr(energy, "own_cpu_seconds", iter([50.0, 60.0] * 2).__next__)

    def publish() -> None:
        Host.publish(host)
        for name, text in files.items():
            if text is None:
                (host.root / name).unlink(missing_ok=True)
            else:
                host.write(name, text)

    monkeypatch.setattr(host, "publish", publish)
    publish()
    times = cpu_time.cpu_times()
    assert times is not None and times.quota is None
    # 10 s of wall time on each CPU: 30% busy beyond the candidate's 10 s over the CPUs it may use
    busy = 10.0 + 0.3 * WINDOW * affinity
    (flag,) = _window(ESTIMATE, host, host_busy=busy * HOST_CPUS / affinity, usage=10.0)
    assert flag == (
        "other processes used 30% of this machine's CPU time during the window (/proc/stat less the "
        "candidate's own): they competed with it for the cores"
    )


def test_rapl_under_a_quota_still_counts_the_hosts_other_work(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAPL reads the whole package's energy, other containers' included: /proc/stat still flags
    them, said as what it is; a quiet host is not flagged."""
    meter = _rapl(tmp_path)
    _own(monkeypatch, 10.0)
    (flag,) = _window(meter, host, host_busy=34.0, usage=10.0)
    assert flag == (
        "other processes used 30% of this machine's CPU time during the window (/proc/stat less the "
        "candidate's own): RAPL counts their energy as the candidate's"
    )
    _own(monkeypatch, 10.0)
    assert _window(meter, host, host_busy=11.0, usage=10.0) == []


def test_the_tightest_quota_is_read_where_it_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested cgroups: the parent's 1.5 CPUs binds; its cpu.stat counts every process under it,
    while the stall is this process's own cgroup's."""
    files = {
        "proc/self/cgroup": "0::/pod/app\n",
        "sys/fs/cgroup/pod/cpu.max": "150000 100000\n",
        "sys/fs/cgroup/pod/cpu.stat": "usage_usec 7000\nthrottled_usec 300\n",
        "sys/fs/cgroup/pod/cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=999\n",
        "sys/fs/cgroup/pod/app/cpu.max": "max 100000\n",
        "sys/fs/cgroup/pod/app/cpu.stat": "usage_usec 5000\nthrottled_usec 0\n",
        "sys/fs/cgroup/pod/app/cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=40\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(host_cpu, "ROOT", tmp_path)
    assert quota_cpu(4, lambda: 7.0) == QuotaCpu(1.5, 7000, 300, 40, 7.0)
    assert quota_cpu(1, lambda: 7.0) is None  # one CPU binds before 1.5


def test_waiting_under_a_quota_waits_for_room_on_the_host(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While this process sleeps its cgroup cannot stall: the wait ends once the host's CPUs were
    idle for at least the quota (2 of 8), not when the host's other work stops."""
    monkeypatch.setattr(cpu_time, "own_cpu_seconds", lambda: 0.0)
    samples = iter([70.0, 70.0, 50.0])  # busy CPU seconds per sample: 1, then 1, then 3 CPUs idle
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        host.advance(host_busy=next(samples), usage=0.0)

    assert cpu_time.wait_for_quiet_cpu(100.0, WINDOW, sleep) == 3 * WINDOW
    # a RAPL meter's wait is for the host's other work to stop: 3 idle CPUs of 8 are not that
    samples = iter([50.0, 50.0, 50.0])
    assert cpu_time.wait_for_quiet_cpu(3 * WINDOW, WINDOW, sleep, package_energy=True) is None


def test_a_rapl_retry_waits_for_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[dict[str, bool]] = []

    def wait(**kwargs: bool) -> float:
        waits.append(kwargs)
        return 1.0

    monkeypatch.setattr(energy, "wait_for_quiet_cpu", wait)

    def attempts(source: str) -> Iterator[Measurement]:
        yield Measurement(source=source, shared_cpu=["other processes used 30% of this machine's CPU time"])
        yield Measurement(source=source)

    for source in ("rapl", "estimate"):
        kept, notes = undisturbed(attempts(source).__next__, lambda m: m, retries=1)
        assert kept.shared_cpu == [] and len(notes) == 1
    assert waits == [{"package_energy": True}, {}]
