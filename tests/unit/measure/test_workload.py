"""The workload protocol: warm-up, steady-state windows, goodput, timeouts, serialization."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.config import SloConfig, WorkloadConfig
from optimizer.measure import energy
from optimizer.measure import workload as workload_module
from optimizer.measure.energy import Measurement
from optimizer.measure.workload import (
    CandidateTimeout,
    PerformanceResult,
    Spread,
    WindowResult,
    Workload,
    measure_performance,
)

NEW_TOKENS = 4


class FakeClock:
    """Time that passes only when an engine works: how many batches a window holds is then the
    protocol's arithmetic, not how late a loaded machine wakes a sleeping thread (a 5 ms sleep that
    wakes 50 ms late leaves a window with a single batch)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The workload protocol's clock (its windows and deadline), for engines and meters given it."""
    fake = FakeClock()
    monkeypatch.setattr(workload_module, "time", SimpleNamespace(perf_counter=fake))
    return fake


class SleepyEngine:
    """generate() sleeps a little (on `clock` when given); every `slow_every`-th call reports a
    slow decode."""

    def __init__(self, sleep: float = 0.005, slow_every: int = 0, clock: FakeClock | None = None) -> None:
        self.sleep = sleep
        self.slow_every = slow_every
        self.calls: list[torch.Tensor] = []
        self._sleep: Callable[[float], None] = clock.sleep if clock is not None else time.sleep

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        self.calls.append(prompt_ids)
        self._sleep(self.sleep)
        slow = self.slow_every and len(self.calls) % self.slow_every == 0
        tpot = 0.5 if slow else 0.01  # seconds per output token after the first
        ttft = 0.02
        return Generation(
            batch_size=prompt_ids.shape[0],
            new_tokens=max_new_tokens,
            ttft_seconds=ttft,
            total_seconds=ttft + tpot * (max_new_tokens - 1),
        )

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not used
        raise NotImplementedError

    def close(self) -> None:
        pass


class WattMeter:
    """A meter drawing a constant `watts` over the real wall time of each window."""

    source = "fake"

    def __init__(
        self, watts: float = 10.0, idle_watts: float = 4.0, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.watts = watts
        self.idle_watts = idle_watts
        self.clock = clock
        self.measurements: list[Measurement] = []

    @contextmanager
    def window(self):
        m = Measurement(source=self.source, idle_watts=self.idle_watts)
        start = self.clock()
        yield m
        m.seconds = self.clock() - start
        m.joules = self.watts * m.seconds
        self.measurements.append(m)


def workload(pool: int = 5, prompt_tokens: int = 3) -> Workload:
    prompts = torch.arange(pool * prompt_tokens).reshape(pool, prompt_tokens)
    return Workload(prompts, NEW_TOKENS)


def cfg(**overrides) -> WorkloadConfig:
    values = {
        "prompt_tokens": 3,
        "max_new_tokens": NEW_TOKENS,
        "min_window_seconds": 0.05,
        "repeats": 3,
        "warmup_batches": 2,
        "idle_seconds": 0,
        "slo": SloConfig(percentile=90, ttft_ms=None, tpot_ms=100),
    } | overrides
    return WorkloadConfig(**values)


def test_workload_batches_cycle_through_the_pool() -> None:
    w = workload(pool=5)
    assert w.batch(0, 2)[:, 0].tolist() == [0, 3]
    assert w.batch(2, 2)[:, 0].tolist() == [12, 0]  # rows 4 and 0
    assert w.batch(1, 7).shape == (7, 3)


def test_generation_timings() -> None:
    g = Generation(batch_size=3, new_tokens=5, ttft_seconds=0.1, total_seconds=0.5)
    assert g.output_tokens == 15
    assert g.tpot_seconds == pytest.approx(0.1)
    assert Generation(1, 1, 0.1, 0.1).tpot_seconds == 0.0  # one token: no decode step


def test_windows_last_at_least_the_minimum_and_repeat(clock: FakeClock) -> None:
    engine, meter = SleepyEngine(clock=clock), WattMeter(clock=clock)
    perf = measure_performance(engine, workload(), 2, meter, cfg(min_window_seconds=0.05, repeats=3))
    assert len(perf.windows) == 3
    assert len(meter.measurements) == 3
    assert all(w.seconds >= 0.05 for w in perf.windows)
    batches = sum(w.output_tokens for w in perf.windows) // (2 * NEW_TOKENS)
    assert batches >= 3 * (0.05 // 0.02)  # many batches per window, not one
    assert len(engine.calls) == 2 + batches  # warm-up batches come first, outside the windows
    assert all(call.shape == (2, 3) for call in engine.calls)
    assert perf.source == "fake"
    assert perf.idle_watts == 4.0


def test_a_window_holds_at_least_one_batch() -> None:
    engine = SleepyEngine(sleep=0.0)
    perf = measure_performance(engine, workload(), 1, WattMeter(), cfg(min_window_seconds=1e-9, repeats=2))
    assert [w.output_tokens for w in perf.windows] == [NEW_TOKENS, NEW_TOKENS]


def test_goodput_counts_only_slo_meeting_batches(clock: FakeClock) -> None:
    engine = SleepyEngine(slow_every=2, clock=clock)  # calls 2, 4, 6, ... miss tpot 100 ms
    perf = measure_performance(
        engine, workload(), 3, WattMeter(clock=clock), cfg(warmup_batches=1, repeats=2)
    )
    for w in perf.windows:
        assert 0 < w.goodput_tokens < w.output_tokens
        assert w.goodput_tokens % (3 * NEW_TOKENS) == 0
    total = sum(w.output_tokens for w in perf.windows)
    good = sum(w.goodput_tokens for w in perf.windows)
    assert perf.goodput_fraction == pytest.approx(good / total)
    assert 0.4 <= perf.goodput_fraction <= 0.6
    # half the requests are slow, so the p90 decode time breaks the SLO
    assert perf.slo_violations and "workload.slo.tpot_ms" in perf.slo_violations[0]
    assert not perf.slo_met
    assert perf.latency.requests == total // NEW_TOKENS


def test_all_requests_meeting_the_slo_make_goodput_equal_throughput() -> None:
    perf = measure_performance(SleepyEngine(), workload(), 2, WattMeter(), cfg(repeats=2))
    assert perf.slo_met and perf.slo_violations == []
    assert perf.goodput_fraction == 1.0
    assert perf.goodput_tokens_per_joule == perf.tokens_per_joule


def test_tokens_per_joule_arithmetic() -> None:
    meter = WattMeter(watts=10.0, idle_watts=4.0)
    perf = measure_performance(SleepyEngine(), workload(), 2, meter, cfg(repeats=2))
    for w, m in zip(perf.windows, meter.measurements, strict=True):
        assert w.joules == pytest.approx(m.joules)
        assert w.active_joules == pytest.approx(m.joules - 4.0 * m.seconds)
        assert w.tokens_per_joule == pytest.approx(w.output_tokens / w.joules)
    per_window = [w.output_tokens / w.joules for w in perf.windows]
    assert perf.tokens_per_joule.mean == pytest.approx(sum(per_window) / 2)
    assert perf.tokens_per_joule.min == pytest.approx(min(per_window))
    assert perf.active_tokens_per_joule.mean == pytest.approx(
        sum(w.output_tokens / w.active_joules for w in perf.windows) / 2
    )
    assert perf.tokens_per_second.mean == pytest.approx(
        sum(w.output_tokens / w.seconds for w in perf.windows) / 2
    )
    assert perf.watts.mean == pytest.approx(10.0)


def test_zero_joules_gives_zero_tokens_per_joule() -> None:
    class ZeroMeter(WattMeter):
        @contextmanager
        def window(self):
            m = Measurement(source="fake")
            yield m
            m.seconds = 0.1

    perf = measure_performance(SleepyEngine(), workload(), 1, ZeroMeter(), cfg(repeats=1))
    assert perf.tokens_per_joule.mean == 0.0
    assert perf.goodput_tokens_per_joule.mean == 0.0


def test_deadline_in_the_past_raises_candidate_timeout() -> None:
    engine = SleepyEngine()
    with pytest.raises(CandidateTimeout):
        measure_performance(engine, workload(), 1, WattMeter(), cfg(), deadline=time.perf_counter() - 1)
    assert len(engine.calls) == 1  # checked after the first batch, not after the whole run


def test_deadline_reached_inside_a_window_raises() -> None:
    engine = SleepyEngine(sleep=0.01)
    deadline = time.perf_counter() + 0.1
    with pytest.raises(CandidateTimeout):
        measure_performance(engine, workload(), 1, WattMeter(), cfg(min_window_seconds=10), deadline)
    assert len(engine.calls) < 50


def test_spread_of_values() -> None:
    s = Spread.of([1.0, 2.0, 3.0])
    assert (s.mean, s.min, s.max) == (2.0, 1.0, 3.0)
    assert s.std == pytest.approx(1.0)
    assert Spread.of([5.0]).std == 0.0


def test_a_results_spreads_and_goodput_share_come_from_its_windows() -> None:
    from optimizer.measure.latency import LatencySummary

    windows = [
        WindowResult(
            "rapl", joules=10.0, active_joules=5.0, seconds=2.0, output_tokens=100, goodput_tokens=100
        ),
        WindowResult(
            "rapl", joules=30.0, active_joules=0.0, seconds=0.0, output_tokens=300, goodput_tokens=0
        ),
    ]
    perf = PerformanceResult.of_windows(windows, 1.5, LatencySummary.of([0.1], [0.01]), ["ttft"])
    assert perf.source == "rapl" and perf.idle_watts == 1.5 and perf.slo_violations == ["ttft"]
    assert perf.tokens_per_joule.mean == pytest.approx(10.0)
    assert (perf.goodput_tokens_per_joule.min, perf.goodput_tokens_per_joule.max) == (0.0, 10.0)
    # a window without active joules (at or below idle) is left out of active tok/J, not read as 0;
    # one without seconds reads 0 tok/s, never a division by zero
    assert (perf.active_tokens_per_joule.max, perf.active_tokens_per_joule.min) == (20.0, 20.0)
    assert (perf.tokens_per_second.max, perf.watts.max) == (50.0, 5.0)
    # the goodput share weighs every token, not every window alike (which would read 0.5)
    assert perf.goodput_fraction == pytest.approx(0.25)


def test_performance_result_round_trips_through_json() -> None:
    perf = measure_performance(
        SleepyEngine(slow_every=3), workload(), 2, WattMeter(), cfg(repeats=2, warmup_batches=0)
    )
    data = json.loads(json.dumps(perf.to_dict()))
    assert data["windows"][0]["tokens_per_joule"] == pytest.approx(perf.windows[0].tokens_per_joule)
    again = PerformanceResult.from_dict(data)
    assert again == perf
    assert again.slo_met == perf.slo_met


class PerRequestEngine(SleepyEngine):
    """Reports each request's own latencies: the second row of every batch decodes too slowly."""

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        generation = super().generate(prompt_ids, max_new_tokens)
        latencies = tuple((0.02, 0.5 if row == 1 else 0.01) for row in range(prompt_ids.shape[0]))
        return Generation(
            generation.batch_size,
            generation.new_tokens,
            generation.ttft_seconds,
            generation.total_seconds,
            request_latencies=latencies,
        )


def test_goodput_judges_each_request_on_its_own_latencies() -> None:
    perf = measure_performance(PerRequestEngine(), workload(), 4, WattMeter(), cfg(repeats=2))
    for window in perf.windows:
        assert window.goodput_tokens == window.output_tokens * 3 // 4  # one slow request in four
    assert perf.goodput_fraction == pytest.approx(0.75)
    assert perf.latency.tpot_ms["p50"] == pytest.approx(10.0)
    assert perf.latency.requests == sum(w.output_tokens for w in perf.windows) // NEW_TOKENS


def test_a_lockstep_generation_gives_every_request_the_batch_latencies() -> None:
    generation = Generation(batch_size=3, new_tokens=5, ttft_seconds=0.1, total_seconds=0.5)
    assert generation.latencies() == [(0.1, pytest.approx(0.1))] * 3


def test_a_candidate_below_the_screen_gets_no_further_windows() -> None:
    """Multi-fidelity: after its first window a candidate far below the best so far stops, and its
    window says why; one that can still win gets all its windows."""
    screened = measure_performance(SleepyEngine(), workload(), 2, WattMeter(), cfg(repeats=3), stop_below=1e9)
    assert len(screened.windows) == 1
    assert any("screened out after 1 of 3 windows" in w for w in screened.windows[0].warnings)
    full = measure_performance(SleepyEngine(), workload(), 2, WattMeter(), cfg(repeats=3), stop_below=1e-9)
    assert len(full.windows) == 3 and not any("screened" in w for x in full.windows for w in x.warnings)


def test_every_window_records_the_machine_speed_probed_before_it() -> None:
    """The probe runs between batches (the engine idle), outside the energy window it describes."""
    engine, meter = SleepyEngine(sleep=0.0), WattMeter()
    events: list[str] = []
    speeds = iter([900.0, 450.0, 880.0])

    def probe() -> float:
        events.append(f"probe with {len(engine.calls)} batches run, {len(meter.measurements)} windows closed")
        return next(speeds)

    perf = measure_performance(
        engine, workload(), 1, meter, cfg(min_window_seconds=1e-9, repeats=3), probe=probe
    )
    assert [w.cpu_probe_mibps for w in perf.windows] == [900.0, 450.0, 880.0]
    # warm-up (2 batches) first; then each probe after the window before it closed, one batch each
    assert events == [f"probe with {2 + i} batches run, {i} windows closed" for i in range(3)]
    assert PerformanceResult.from_dict(json.loads(json.dumps(perf.to_dict()))) == perf


def test_windows_stored_before_the_probe_load_without_it() -> None:
    perf = measure_performance(
        SleepyEngine(sleep=0.0), workload(), 1, WattMeter(), cfg(repeats=1), probe=lambda: 1.0
    )
    data = perf.to_dict()
    for window in data["windows"]:
        del window["cpu_probe_mibps"]
    assert PerformanceResult.from_dict(data).windows[0].cpu_probe_mibps is None


class SharedCpuMeter(WattMeter):
    """A WattMeter whose windows numbered in `disturbed` (0-based, in the order they open) had their
    CPU time taken, as the CPU meters flag it (measure/cpu_time.py)."""

    def __init__(self, disturbed: set[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.disturbed = disturbed

    @contextmanager
    def window(self):
        index = len(self.measurements)
        with super().window() as m:
            yield m
        if index in self.disturbed:
            text = f"the hypervisor took 4{index}% of the CPU time this VM wanted during the window"
            m.warnings.append(text)
            m.shared_cpu.append(text)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each wait for a quiet CPU before a retry (none really waits), in order."""
    waits: list[str] = []

    def wait() -> float:
        waits.append("waited")
        return 1.5

    monkeypatch.setattr(energy, "wait_for_quiet_cpu", wait)
    return waits


def test_a_window_whose_cpu_time_was_taken_is_measured_again(clock: FakeClock, settled: list[str]) -> None:
    """The disturbed window is replaced, its batches' latencies with it, after a wait for a quiet
    CPU; the one kept says so."""
    meter = SharedCpuMeter({1}, clock=clock)
    engine = SleepyEngine(clock=clock)
    perf = measure_performance(engine, workload(), 2, meter, cfg(repeats=2, disturbed_retries=1))
    assert len(meter.measurements) == 3 and len(perf.windows) == 2
    assert perf.windows[0].warnings == []
    assert perf.windows[1].warnings == [
        "measured again after a window in which the hypervisor took 41% of the CPU time this VM "
        "wanted during the window"
    ]
    assert perf.windows[1].joules == pytest.approx(meter.measurements[2].joules)
    kept_batches = sum(w.output_tokens for w in perf.windows) // (2 * NEW_TOKENS)
    assert perf.latency.requests == 2 * kept_batches  # the replaced window's requests are not judged
    assert len(engine.calls) > 2 + kept_batches  # though its batches ran (after the 2 warm-up ones)
    assert settled == ["waited"]


def test_without_retries_or_when_every_attempt_is_disturbed_the_last_is_kept_flagged(
    clock: FakeClock, settled: list[str]
) -> None:
    kept = measure_performance(
        SleepyEngine(clock=clock),
        workload(),
        2,
        SharedCpuMeter({0}, clock=clock),
        cfg(repeats=1, disturbed_retries=0),
    )
    assert kept.windows[0].warnings == [
        "the hypervisor took 40% of the CPU time this VM wanted during the window"
    ]
    meter = SharedCpuMeter({0, 1, 2}, clock=clock)
    last = measure_performance(
        SleepyEngine(clock=clock), workload(), 2, meter, cfg(repeats=1, disturbed_retries=1)
    )
    assert len(meter.measurements) == 2  # one retry, then the second disturbed attempt is kept
    assert settled == ["waited"]  # before the retry only
    assert last.windows[0].warnings == [
        "measured again after a window in which the hypervisor took 40% of the CPU time this VM wanted "
        "during the window",
        "the hypervisor took 41% of the CPU time this VM wanted during the window",
    ]
