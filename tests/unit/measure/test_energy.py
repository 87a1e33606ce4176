"""Energy meters: the estimate's arithmetic, RAPL on a fake powercap tree, power integration."""

from __future__ import annotations

import itertools
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.measure import cpu_time, energy
from optimizer.measure.energy import (
    EstimateMeter,
    Measurement,
    RaplMeter,
    make_meter,
    measure_idle_watts,
)
from optimizer.measure.nvml_device import integrate_power


def _process_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _burn(seconds: float) -> int:
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def test_measurement_derived_values() -> None:
    m = Measurement(source="rapl", joules=100.0, seconds=4.0, idle_watts=10.0)
    assert m.watts == pytest.approx(25.0)
    assert m.active_joules == pytest.approx(60.0)
    assert not m.is_estimate
    assert Measurement(source="estimate").is_estimate
    assert Measurement(source="rapl").watts == 0.0  # no division by zero
    # active energy is never negative, even when idle was overestimated
    assert Measurement(source="rapl", joules=1.0, seconds=1.0, idle_watts=50.0).active_joules == 0.0


def test_estimate_meter_counts_cpu_time_and_static_power() -> None:
    meter = EstimateMeter(cores=2, active_watts_per_core=10.0, idle_watts_per_core=1.0)
    assert meter.source == "estimate"
    assert meter.static_watts == pytest.approx(2.0)
    assert meter.idle_watts == pytest.approx(2.0)
    # The meter's window lies between an inner and an outer reading of the same clocks, so its
    # seconds and CPU seconds lie between theirs, however long this thread is descheduled next to
    # a reading (20 ms of that failed the former fixed tolerance around the inner reading).
    outer_cpu0, outer_wall0 = _process_cpu_seconds(), time.perf_counter()
    with meter.window() as m:
        cpu0, wall0 = _process_cpu_seconds(), time.perf_counter()
        _burn(0.3)
        cpu, wall = _process_cpu_seconds() - cpu0, time.perf_counter() - wall0
    outer_cpu, outer_wall = _process_cpu_seconds() - outer_cpu0, time.perf_counter() - outer_wall0
    assert m.source == "estimate" and m.is_estimate
    assert m.idle_watts == pytest.approx(2.0)
    assert wall <= m.seconds <= outer_wall
    assert cpu >= 0.29
    eps = 1e-9  # float rounding of the sums
    assert cpu * 10.0 + wall * 2.0 - eps <= m.joules <= outer_cpu * 10.0 + outer_wall * 2.0 + eps
    # active energy is the CPU part only
    assert cpu * 10.0 - eps <= m.active_joules <= outer_cpu * 10.0 + eps


def test_estimate_meter_arithmetic_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = iter([100.0, 103.0])
    wall = iter([50.0, 54.0])
    monkeypatch.setattr(energy, "own_cpu_seconds", lambda: next(cpu))
    monkeypatch.setattr(energy.time, "perf_counter", lambda: next(wall))
    meter = EstimateMeter(cores=4, active_watts_per_core=5.0, idle_watts_per_core=1.5)
    with meter.window() as m:
        pass
    assert m.seconds == 4.0
    assert m.joules == pytest.approx(3.0 * 5.0 + 4.0 * 4 * 1.5)


def test_estimate_meter_without_cpu_time_is_static_power(monkeypatch: pytest.MonkeyPatch) -> None:
    # process CPU time frozen: other threads of the test process (torch's pool) cannot leak in
    monkeypatch.setattr(energy, "own_cpu_seconds", lambda: 12.0)
    meter = EstimateMeter(cores=2, active_watts_per_core=10.0, idle_watts_per_core=1.0)
    with meter.window() as m:
        time.sleep(0.05)
    assert m.seconds >= 0.05
    assert m.watts == pytest.approx(2.0)
    assert m.active_joules == pytest.approx(0.0, abs=1e-9)


def _domain(
    root: Path, name: str, energy_uj: int | str, max_range: int = 1_000_000_000, zone: str = "package-0"
) -> Path:
    d = root / name
    d.mkdir()
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    (d / "name").write_text(f"{zone}\n")
    return d


@pytest.fixture
def powercap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "powercap"
    root.mkdir()
    monkeypatch.setattr(energy, "POWERCAP", root)
    return root


def test_rapl_package_domains_skip_subdomains_and_unreadable(powercap: Path) -> None:
    _domain(powercap, "intel-rapl:0", 5)
    _domain(powercap, "intel-rapl:0:0", 5)  # core sub-domain: counted inside the package
    _domain(powercap, "intel-rapl:1", 7)
    _domain(powercap, "intel-rapl:2", "not a number")
    _domain(powercap, "intel-rapl-mmio:0", 9)
    assert [d.name for d in RaplMeter.package_domains()] == ["intel-rapl:0", "intel-rapl:1"]


def test_rapl_leaves_out_the_platform_zone(powercap: Path) -> None:
    """psys (Intel client CPUs) holds the packages' energy too: summed with them it counts twice."""
    _domain(powercap, "intel-rapl:0", 5)
    _domain(powercap, "intel-rapl:1", 7, zone="psys")
    _domain(powercap, "intel-rapl:2", 9, zone="package-1")
    assert [d.name for d in RaplMeter.package_domains()] == ["intel-rapl:0", "intel-rapl:2"]


def test_rapl_without_powercap_has_no_domains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "missing")
    assert RaplMeter.package_domains() == []


def test_rapl_window_sums_packages_and_handles_wrap_around(powercap: Path) -> None:
    p0 = _domain(powercap, "intel-rapl:0", 999_000_000, max_range=1_000_000_000)
    p1 = _domain(powercap, "intel-rapl:1", 10_000_000, max_range=262_143_328_850)
    meter = RaplMeter(RaplMeter.package_domains())
    meter.idle_watts = 3.0
    assert meter.ranges == [1_000_000_000, 262_143_328_850]
    with meter.window() as m:
        (p0 / "energy_uj").write_text("1000000\n")  # wrapped: 1 J to the top, 1 J after zero
        (p1 / "energy_uj").write_text("13500000\n")  # +3.5 J
    assert m.source == "rapl"
    assert m.joules == pytest.approx(2.0 + 3.5)
    assert m.seconds > 0
    assert m.idle_watts == 3.0


def test_make_meter_picks_rapl_when_readable(powercap: Path, make_target) -> None:
    _domain(powercap, "intel-rapl:0", 1)
    meter = make_meter(make_target(energy_source="auto"))
    assert isinstance(meter, RaplMeter)
    assert meter.source == "rapl"
    # an explicit estimate wins over an available counter
    assert isinstance(make_meter(make_target(energy_source="estimate")), EstimateMeter)


def test_make_meter_falls_back_to_the_labelled_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "missing")
    meter = make_meter(make_target(cores=3, cpu_active_watts_per_core=7.0, cpu_idle_watts_per_core=2.0))
    assert isinstance(meter, EstimateMeter)
    assert meter.source == "estimate"
    assert meter.active_watts_per_core == 7.0
    assert meter.static_watts == pytest.approx(6.0)


@pytest.mark.parametrize("source", ["rapl", "nvml"])
def test_make_meter_refuses_an_unavailable_source(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "missing")
    with pytest.raises(UserError) as info:
        make_meter(make_target(energy_source=source))
    assert info.value.field == "target.energy_source"


def test_integrate_power_trapezoid_with_edges() -> None:
    samples = [(1.0, 10.0), (2.0, 20.0), (3.0, 20.0)]
    # edges: [0, 1] at 10 W, [3, 4] at 20 W; inside: 15 + 20
    assert integrate_power(samples, 0.0, 4.0) == pytest.approx(10 + 15 + 20 + 20)
    # constant power integrates to power x time
    flat = [(t / 10, 50.0) for t in range(11)]
    assert integrate_power(flat, 0.0, 1.0) == pytest.approx(50.0)


def test_integrate_power_clips_to_the_window_and_needs_two_samples() -> None:
    samples = [(0.0, 1000.0), (1.0, 10.0), (2.0, 10.0), (9.0, 1000.0)]
    assert integrate_power(samples, 0.5, 2.5) == pytest.approx(20.0)
    assert integrate_power([(1.0, 10.0)], 0.0, 2.0) is None
    assert integrate_power([], 0.0, 2.0) is None


class _FixedMeter:
    source = "fake"

    def __init__(self) -> None:
        self.idle_watts = 0.0
        self.windows = 0

    @contextmanager
    def window(self):
        m = Measurement(source=self.source, idle_watts=self.idle_watts)
        self.windows += 1
        yield m
        m.joules, m.seconds = 30.0, 2.0


def test_measure_idle_watts_sets_the_meters_baseline() -> None:
    meter = _FixedMeter()
    assert measure_idle_watts(meter, 0.01) == pytest.approx(15.0)
    assert meter.idle_watts == pytest.approx(15.0)
    assert meter.windows == 1


class _SharedIdleMeter(_FixedMeter):
    """Its first window had its CPU taken by another process: 45 W, then the quiet 15 W."""

    @contextmanager
    def window(self):
        with super().window() as m:
            yield m
        if self.windows == 1:
            m.joules = 90.0
            m.shared_cpu.append("other processes used 40% of this machine's CPU time")


def test_an_idle_window_whose_cpu_was_taken_is_measured_again_except_by_the_estimate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(energy, "wait_for_quiet_cpu", lambda: 0.5)
    meter = _SharedIdleMeter()
    assert measure_idle_watts(meter, 0.01, disturbed_retries=1) == pytest.approx(15.0)
    assert meter.windows == 2
    meter = _SharedIdleMeter()
    assert measure_idle_watts(meter, 0.01) == pytest.approx(45.0)  # no retries: kept as measured
    meter = _SharedIdleMeter()
    meter.source = "estimate"  # the estimate's idle power is its coefficients: nothing to retry
    assert measure_idle_watts(meter, 0.01, disturbed_retries=1) == pytest.approx(45.0)
    assert meter.windows == 1


def test_measure_idle_watts_zero_seconds_keeps_the_baseline() -> None:
    meter = _FixedMeter()
    meter.idle_watts = 4.0
    assert measure_idle_watts(meter, 0) == 4.0
    assert meter.windows == 0


def test_measure_idle_watts_on_the_estimate_is_static_power(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy, "own_cpu_seconds", lambda: 12.0)
    meter = EstimateMeter(cores=2, active_watts_per_core=10.0, idle_watts_per_core=1.0)
    meter.idle_watts = 0.0
    watts = measure_idle_watts(meter, 0.05)
    assert meter.idle_watts == watts
    assert watts == pytest.approx(2.0)


def _stat_line(steal: int, idle: int, user: int = 1000) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 100 {idle} 0 0 0 {steal} 0 0\ncpu0 500 0 50 {idle // 2} 0 0 0 {steal // 2} 0 0\n"


def _cpu_meter(kind: str, tmp_path: Path) -> EstimateMeter | RaplMeter:
    if kind == "rapl":
        domain = tmp_path / "intel-rapl:0"
        domain.mkdir()
        (domain / "energy_uj").write_text("0")
        (domain / "max_energy_range_uj").write_text("1000000000")
        return RaplMeter([domain])
    return EstimateMeter(cores=2, active_watts_per_core=5.0, idle_watts_per_core=1.5)


@pytest.mark.parametrize("meter_kind", ["estimate", "rapl"])
def test_a_window_the_hypervisor_slowed_is_flagged(tmp_path: Path, monkeypatch, meter_kind: str) -> None:
    """Steal time (/proc/stat) is CPU time the VM's vCPUs waited for the host: 20% of the time they
    wanted (busy + steal) is flagged with its share, 1% is not, and a machine without the column
    flags nothing. Idle time does not dilute it: the window below is mostly idle."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(cpu_time, "PROC_STAT", stat)
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: None)  # all CPUs: the first line
    meter = _cpu_meter(meter_kind, tmp_path)

    tick = cpu_time.CLOCK_TICKS
    # the candidate's own CPU seconds: all of the window's busy time, so no other process competed
    own = itertools.cycle([0.0, 1000 / tick])  # a window's start and end
    monkeypatch.setattr(energy, "own_cpu_seconds", lambda: next(own))

    def window(steal_after: int) -> list[str]:
        stat.write_text(_stat_line(steal=100, idle=8900))
        with meter.window() as measurement:  # 1,000 busy jiffies, 8,000 idle ones
            stat.write_text(_stat_line(steal=steal_after, idle=8900 + 8000, user=1000 + 1000))
        return measurement.warnings

    (flag,) = window(steal_after=100 + 250)  # 250 of the 1,250 wanted: 20%
    assert "the hypervisor took 20% of the CPU time this VM wanted during the window" in flag
    assert window(steal_after=100 + 10) == []  # 1%
    # a window in which the VM hardly ran: 7 of 12 jiffies wanted were stolen, 7 of 9,012 in all
    own = itertools.cycle([0.0, 5 / tick])
    stat.write_text(_stat_line(steal=100, idle=8900))
    with meter.window() as measurement:
        stat.write_text(_stat_line(steal=107, idle=8900 + 9000, user=1000 + 5))
    assert measurement.warnings == []
    stat.write_text("intr 0\n")  # not a /proc/stat this meter can read
    with meter.window() as measurement:
        pass
    assert measurement.warnings == []
    stat.unlink()
    assert cpu_time.cpu_times() is None


@pytest.mark.parametrize("meter_kind", ["estimate", "rapl"])
def test_a_window_other_processes_competed_in_is_flagged(
    tmp_path: Path, monkeypatch, meter_kind: str
) -> None:
    """Busy jiffies beyond the candidate's own CPU seconds are other processes' work: 3 of 10 CPU
    seconds is flagged with its share; the same busy time when it was the candidate's own is not."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(cpu_time, "PROC_STAT", stat)
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: None)  # all CPUs: the first line
    meter = _cpu_meter(meter_kind, tmp_path)
    tick = cpu_time.CLOCK_TICKS

    def window(own_seconds: float) -> list[str]:
        own = iter([100.0, 100.0 + own_seconds])
        monkeypatch.setattr(energy, "own_cpu_seconds", lambda: next(own))
        stat.write_text(_stat_line(steal=0, idle=50 * tick, user=10 * tick))
        with meter.window() as measurement:  # 10 s of the machine's CPU time, 3 s of them busy
            stat.write_text(_stat_line(steal=0, idle=57 * tick, user=13 * tick))
        return measurement.warnings

    (flag,) = window(own_seconds=0.0)
    assert flag.startswith("other processes used 30% of this machine's CPU time during the window")
    assert window(own_seconds=2.9) == []  # 0.1 of 10 s: 1%


def test_only_the_cpus_this_process_may_run_on_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned to cpu0 and cpu1 of a four-CPU host, the work on cpu2 and cpu3 is not competition;
    an affinity naming a CPU the file lacks falls back to all CPUs together."""
    stat = tmp_path / "stat"
    monkeypatch.setattr(cpu_time, "PROC_STAT", stat)
    stat.write_text(
        "cpu  4000 0 0 6000 0 0 0 40 0 0\n"
        "cpu0 100 0 0 2400 0 0 0 10 0 0\n"
        "cpu1 200 0 0 2300 0 0 0 10 0 0\n"
        "cpu2 1800 0 0 700 0 0 0 10 0 0\n"
        "cpu3 1900 0 0 600 0 0 0 10 0 0\n"
    )
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: {0, 1})
    assert cpu_time.cpu_times() == cpu_time.CpuTimes(steal=20, busy=300, total=5020)
    monkeypatch.setattr(cpu_time, "allowed_cpus", lambda: {0, 7})
    assert cpu_time.cpu_times() == cpu_time.CpuTimes(steal=40, busy=4000, total=10040)


def test_waiting_for_a_quiet_cpu_samples_until_other_processes_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readings 0.5 s apart: another process busy for 25% of the CPU time, then quiet (1%)."""
    busy = iter([0, 50, 50, 52])  # jiffies of busy time at each reading: the deltas 50, then 2
    readings = iter(range(0, 2000, 200))  # 200 jiffies of all CPU time per sample
    monkeypatch.setattr(
        cpu_time, "cpu_times", lambda: cpu_time.CpuTimes(steal=0, busy=next(busy), total=next(readings))
    )
    monkeypatch.setattr(cpu_time, "own_cpu_seconds", lambda: 0.0)
    slept: list[float] = []
    assert cpu_time.wait_for_quiet_cpu(10.0, 0.5, slept.append) == 1.0
    assert slept == [0.5, 0.5]


def test_waiting_for_a_quiet_cpu_gives_up_at_its_limit_or_without_proc_stat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = itertools.count(0, 100)
    monkeypatch.setattr(
        cpu_time, "cpu_times", lambda: cpu_time.CpuTimes(steal=0, busy=next(ticks), total=2 * next(ticks))
    )
    monkeypatch.setattr(cpu_time, "own_cpu_seconds", lambda: 0.0)
    slept: list[float] = []
    assert cpu_time.wait_for_quiet_cpu(2.0, 0.5, slept.append) is None
    assert slept == [0.5] * 4
    monkeypatch.setattr(cpu_time, "cpu_times", lambda: None)
    assert cpu_time.wait_for_quiet_cpu(2.0, 0.5, slept.append) is None
