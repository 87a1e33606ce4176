"""Serving measurements: arrival-time submission, per-request latencies, the steady-state window."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from optimizer.config import LengthConfig, SloConfig, WorkloadConfig
from optimizer.measure import energy
from optimizer.measure.energy import Measurement
from optimizer.measure.load import measure_serving
from optimizer.measure.serving import Completion, ServingRun, serve_stream
from optimizer.measure.stream import TextTokens, generate_stream


class WattMeter:
    """Draws a constant `watts` over each window's wall time."""

    source = "fake"

    def __init__(self, watts: float = 10.0) -> None:
        self.watts, self.idle_watts = watts, 2.0

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        measurement = Measurement(source=self.source, idle_watts=self.idle_watts)
        start = time.perf_counter()
        yield measurement
        measurement.seconds = time.perf_counter() - start
        measurement.joules = self.watts * measurement.seconds


class FifoServer:
    """A fake engine serving `slots` requests at a time, first come first served: a request's
    first token comes `ttft` after it starts, then one token every `tpot` seconds."""

    def __init__(self, slots: int = 1000, ttft: float = 0.01, tpot: float = 0.002) -> None:
        self.slots, self.ttft, self.tpot = slots, ttft, tpot
        self.free_at = [0.0] * slots
        self.pending: list[tuple[float, Completion]] = []
        self.submitted: list[float] = []

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        now = time.perf_counter()
        self.submitted.append(now)
        slot = min(range(self.slots), key=self.free_at.__getitem__)
        start = max(now, self.free_at[slot])
        times = tuple(start + self.ttft + i * self.tpot for i in range(max_new_tokens))
        self.free_at[slot] = times[-1]
        request_id = str(len(self.submitted))
        self.pending.append((times[-1], Completion(request_id, tuple(range(max_new_tokens)), times)))
        return request_id

    def cancel_all(self) -> None:
        self.cancelled = len(self.pending)
        self.pending = []

    def collect(self, timeout_seconds: float) -> list[Completion]:
        deadline = time.perf_counter() + timeout_seconds
        while True:
            now = time.perf_counter()
            done = [c for t, c in self.pending if t <= now]
            if done or now >= deadline:
                self.pending = [(t, c) for t, c in self.pending if t > now]
                return done
            time.sleep(min(0.002, deadline - now))


def stream(requests: int = 40, rate: float = 100.0, output: int = 5):  # type: ignore[no-untyped-def]
    cfg = WorkloadConfig(
        kind="serving",
        requests=requests,
        rate=rate,
        arrivals="constant",
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", output, 1, 64),
        warmup_requests=0,
        drain_requests=0,
    )
    return generate_stream(cfg, TextTokens(list(range(100, 200))))


def test_requests_are_submitted_at_their_arrival_times_and_judged_each() -> None:
    s = stream(requests=30, rate=100.0)
    server = FifoServer()
    run = serve_stream(
        server, s, WattMeter(), SloConfig(ttft_ms=50, tpot_ms=10), warmup_requests=5, drain_requests=5
    )
    t0 = server.submitted[0] - s.requests[0].arrival_seconds
    lags = [sub - t0 - r.arrival_seconds for sub, r in zip(server.submitted, s.requests, strict=True)]
    # each submission follows its own arrival (all at once would lag up to 0.3 s); the bound leaves
    # room for a loaded CI machine's scheduling delays
    assert max(lags) < 0.04 and run.lateness_seconds < 0.04
    assert len(run.requests) == 30
    for record in run.requests:
        # TTFT counts from the arrival: the generator's lag, then the engine's 10 ms
        lag = record.submitted - record.arrival
        assert record.ttft == pytest.approx(lag + 0.01, abs=0.003)
        assert record.tpot == pytest.approx(0.002, abs=1e-6)
        assert record.output_tokens == 5 and record.met_slo and record.gave_up_at is None
    window = run.window
    assert window.start == pytest.approx(s.requests[5].arrival_seconds, abs=0.04)
    assert window.end == pytest.approx(s.requests[24].arrival_seconds, abs=0.04)
    assert window.goodput_tokens == window.output_tokens > 0
    assert not window.growing
    assert 0 <= window.idle_fraction < 1


def test_the_window_counts_tokens_by_their_timestamps() -> None:
    run = serve_stream(
        FifoServer(), stream(), WattMeter(), SloConfig(), warmup_requests=10, drain_requests=10
    )
    counted = sum(run.window.start <= t <= run.window.end for r in run.requests for t in r.token_times)
    assert run.window.output_tokens == counted
    # about rate x window seconds x tokens per request (one window's worth of arrivals)
    expected = 100 * run.window.seconds * 5
    assert run.window.output_tokens == pytest.approx(expected, rel=0.25)
    assert run.measurement.seconds == pytest.approx(run.window.seconds, abs=0.02)


def test_an_engine_slower_than_the_rate_grows_a_queue_and_misses_the_ttft_slo() -> None:
    slow = FifoServer(slots=1, ttft=0.01, tpot=0.01)  # 50 ms per request, 100 requests/s offered
    run = serve_stream(slow, stream(requests=30), WattMeter(), SloConfig(ttft_ms=100, tpot_ms=50), 3, 3)
    assert run.window.growing
    late = [r for r in run.requests if not r.met_slo]
    assert late and all(r.ttft > 0.1 for r in late)
    assert run.window.goodput_tokens < run.window.output_tokens


def test_measure_serving_reports_goodput_joules_per_request_and_the_stream() -> None:
    s = stream(requests=30)
    perf = measure_serving(
        FifoServer(), s, WattMeter(watts=10.0), SloConfig(ttft_ms=50, tpot_ms=10), 2, 5, 5, 100.0
    )
    assert len(perf.windows) == 2 and perf.slo_met
    assert perf.serving is not None
    assert perf.serving.stream_sha256 == s.sha256 and perf.serving.requests == 30
    assert perf.serving.rate == 100.0 and perf.serving.met_slo_fraction == 1.0
    completed_per_window = perf.serving.window_requests / 2
    assert perf.serving.joules_per_request == pytest.approx(
        10.0 * perf.windows[0].seconds / completed_per_window, rel=0.3
    )
    assert perf.goodput_tokens_per_joule.mean == pytest.approx(perf.tokens_per_joule.mean)
    again = type(perf).from_dict(perf.to_dict())
    assert again.serving == perf.serving


def test_the_request_that_opens_the_window_is_judged() -> None:
    """The meter opens just after the opening request arrives: judged by time, that request (and
    any arriving at the same instant) was left out although its arrival opened the window."""

    class SlowOpener(FifoServer):
        def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
            self.ttft = 0.2 if len(self.submitted) == 2 else 0.01  # the third, index 2
            return super().submit(prompt_ids, max_new_tokens)

    s = stream(requests=12)
    perf = measure_serving(SlowOpener(), s, WattMeter(), SloConfig(ttft_ms=100), 1, 2, 2, 100.0)
    assert perf.serving is not None
    assert perf.serving.window_requests == 8  # indexes 2 to 9
    assert perf.serving.met_slo_fraction == pytest.approx(7 / 8)
    assert perf.goodput_tokens_per_joule.mean < perf.tokens_per_joule.mean


def test_a_tpot_only_slo_is_broken_by_requests_never_finished() -> None:
    """A request given up has no time per token; with no TTFT target nothing else would count it,
    and a run that finished none of its window's requests would meet the SLO."""
    stuck = FifoServer(slots=1, ttft=0.01, tpot=0.1)  # 410 ms per request of 5 tokens
    slo = SloConfig(tpot_ms=500)  # every request served meets it
    perf = measure_serving(stuck, stream(requests=12, rate=20), WattMeter(), slo, 1, 0, 0, 20.0, 0.3)
    assert stuck.cancelled > 6
    assert not perf.slo_met
    assert any(v.startswith("TPOT p90 unbounded:") for v in perf.slo_violations), perf.slo_violations


@pytest.mark.parametrize(
    ("timed", "unfinished", "broken"),
    [(9, 1, True), (10, 1, False), (0, 3, True), (10, 0, False), (19, 1, False), (18, 2, True)],
)
def test_unfinished_requests_break_the_tpot_target_once_they_reach_its_percentile(
    timed: int, unfinished: int, broken: bool
) -> None:
    from optimizer.measure.latency import unfinished_violation

    # p90 of 10 values interpolates between indexes 8 and 9 (rank 8.1): one unbounded value is
    # index 9; of 11, rank 9.0 is index 9 exactly; of 20, rank 17.1 touches indexes 17 and 18
    violation = unfinished_violation(timed, unfinished, SloConfig(tpot_ms=100))
    assert bool(violation) == broken
    assert not unfinished_violation(timed, unfinished, SloConfig(ttft_ms=100, tpot_ms=None))


def test_a_failed_request_fails_the_run() -> None:
    class Failing(FifoServer):
        def collect(self, timeout_seconds: float) -> list[Completion]:
            return [Completion(c.request_id, (), (), error="boom") for c in super().collect(timeout_seconds)]

    with pytest.raises(RuntimeError, match="boom"):
        serve_stream(Failing(), stream(requests=5), WattMeter(), SloConfig(), 1, 1)


def test_the_energy_window_is_the_steady_state_window() -> None:
    run = serve_stream(FifoServer(), stream(requests=8), WattMeter(watts=10.0), SloConfig(), 2, 2)
    assert isinstance(run, ServingRun)
    # the meter runs from the 3rd arrival to the 6th (2 warm-up, 2 drain), as the window counts
    # tokens: energy and tokens describe the same seconds
    assert run.window.seconds > 0
    # (5 ms of slack for a busy machine; opening at the first arrival would be 20 ms off)
    assert run.measurement.seconds == pytest.approx(run.window.seconds, abs=5e-3)
    assert run.measurement.joules == pytest.approx(10.0 * run.window.seconds, abs=0.05)


def test_a_run_gives_up_on_a_queue_it_cannot_drain_and_counts_it_as_missed() -> None:
    stuck = FifoServer(slots=1, ttft=0.01, tpot=0.2)  # one second per request
    # 24 requests, not 12: with 12 the queue's growth (7.7 in flight against a threshold of 7.4)
    # hung on a few ms of scheduling delay and read "not growing" on a loaded machine
    run = serve_stream(
        stuck, stream(requests=24), WattMeter(), SloConfig(ttft_ms=500), 2, 2, drain_timeout_seconds=0.3
    )
    assert stuck.cancelled > 0
    unfinished = [r for r in run.requests if not r.token_times]
    assert len(unfinished) == stuck.cancelled
    for record in unfinished:
        assert not record.met_slo and record.output_tokens == 0
        assert record.ttft == pytest.approx(record.gave_up_at - record.arrival)
        assert record.ttft > 0.3
    assert run.window.growing


def test_requests_given_up_on_have_no_time_per_output_token() -> None:
    """An overloaded run leaves most requests unserved: counted as 0 ms they would pull the TPOT
    percentiles below what every served request saw (and hide a TPOT breach)."""
    stuck = FifoServer(slots=1, ttft=0.01, tpot=0.1)  # 410 ms per request of 5 tokens
    perf = measure_serving(
        stuck, stream(requests=12, rate=20), WattMeter(), SloConfig(tpot_ms=80), 1, 0, 0, 20.0, 0.3
    )
    assert stuck.cancelled > 6  # most of the stream was never served
    assert perf.latency.tpot_ms["p50"] == pytest.approx(100, rel=0.2)
    assert any(v.startswith("TPOT p90") for v in perf.slo_violations), perf.slo_violations


def test_every_run_starts_with_the_engines_prefix_cache_forgotten() -> None:
    class Caching(FifoServer):
        forgotten_before: list[int] = []

        def forget_cached_prefixes(self) -> None:
            self.forgotten_before.append(len(self.submitted))

    engine = Caching()
    measure_serving(engine, stream(requests=6), WattMeter(), SloConfig(), 2, 1, 1, 100.0)
    assert engine.forgotten_before == [0, 6]  # before each of the two runs, never inside one


def test_a_stream_run_below_the_screen_is_not_repeated() -> None:
    engine = FifoServer()
    screened = measure_serving(
        engine, stream(requests=6), WattMeter(), SloConfig(), 3, 1, 1, 100.0, stop_below=1e9
    )
    assert len(screened.windows) == 1 and "screened out" in screened.windows[0].warnings[-1]
    full = measure_serving(
        FifoServer(), stream(requests=6), WattMeter(), SloConfig(), 2, 1, 1, 100.0, stop_below=0.0
    )
    assert len(full.windows) == 2


def test_a_run_probes_the_machine_before_its_first_request_and_its_window_keeps_the_speed() -> None:
    server = FifoServer()
    submitted_before: list[int] = []

    def probe() -> float:
        submitted_before.append(len(server.submitted))
        return 1234.0

    run = serve_stream(server, stream(requests=10), WattMeter(), SloConfig(), 2, 2, probe=probe)
    assert submitted_before == [0] and run.cpu_probe_mibps == 1234.0
    perf = measure_serving(FifoServer(), stream(requests=10), WattMeter(), SloConfig(), 2, 2, 2, 100.0)
    assert len(perf.windows) == 2
    assert all(
        w.cpu_probe_mibps is not None and w.cpu_probe_mibps > 0 for w in perf.windows
    )  # the real probe


class SharedCpuMeter(WattMeter):
    """Its first `disturbed` windows had their CPU time taken (the CPU meters' flag)."""

    def __init__(self, disturbed: int) -> None:
        super().__init__()
        self.disturbed, self.opened = disturbed, 0

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        self.opened += 1
        with super().window() as measurement:
            yield measurement
        if self.opened <= self.disturbed:
            text = f"other processes used 3{self.opened}% of this machine's CPU time during the window"
            measurement.warnings.append(text)
            measurement.shared_cpu.append(text)


def test_a_run_whose_cpu_time_was_taken_is_run_again_up_to_the_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[int] = []
    monkeypatch.setattr(energy, "wait_for_quiet_cpu", lambda: waits.append(len(server.submitted)))
    server, meter = FifoServer(), SharedCpuMeter(disturbed=1)
    perf = measure_serving(
        server, stream(requests=6), meter, SloConfig(), 1, 1, 1, 100.0, disturbed_retries=1
    )
    assert meter.opened == 2 and len(server.submitted) == 12  # the whole stream again
    assert waits == [6]  # a wait for a quiet CPU between the runs
    assert len(perf.windows) == 1 and perf.windows[0].warnings == [
        "measured again after a window in which other processes used 31% of this machine's CPU time "
        "during the window"
    ]
    meter = SharedCpuMeter(disturbed=1)
    kept = measure_serving(FifoServer(), stream(requests=6), meter, SloConfig(), 1, 1, 1, 100.0)
    assert meter.opened == 1 and kept.windows[0].warnings == [
        "other processes used 31% of this machine's CPU time during the window"
    ]
    assert perf.serving is not None and kept.serving is not None
    # the replaced run's requests are not judged: one run's window holds at most 4 of the 6
    assert perf.serving.window_requests == kept.serving.window_requests <= 4


def test_no_run_starts_past_the_candidates_deadline() -> None:
    """A stalled engine's run lasts until the drain gives up: the candidate's timeout must stop its
    repeats, not only the load curve's points."""
    from optimizer.measure.workload import CandidateTimeout

    engine = FifoServer()
    with pytest.raises(CandidateTimeout):
        measure_serving(
            engine, stream(requests=6), WattMeter(), SloConfig(), 3, 1, 1, 100.0, deadline=time.perf_counter()
        )
    assert len(engine.submitted) == 6  # one run of the three


class WordTokens:
    """One token per word: enough for a trace's counted prompts."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


def test_a_trace_is_measured_and_recorded_at_its_own_rate_not_workload_rate(tmp_path: Path) -> None:
    """A trace is replayed at its own times (here 100 req/s): its serving rate, load curve and
    capacity are that rate, not the 2 req/s of workload.rate, which a trace does not follow."""
    from optimizer.measure.load import measure_load
    from optimizer.measure.setup import _streams

    trace = tmp_path / "t.jsonl"
    rows = [{"arrival": i / 100, "prompt_tokens": 8, "output_tokens": 5} for i in range(30)]
    trace.write_text("".join(json.dumps(row) + "\n" for row in rows))
    slo = SloConfig(ttft_ms=500, tpot_ms=100)
    cfg = WorkloadConfig(kind="serving", trace=str(trace), rate=2.0, repeats=1, slo=slo)
    streams = _streams(cfg, WordTokens(), ["word " * 70_000], None)
    perf = measure_load(FifoServer(), 1, streams, WattMeter(), cfg)  # type: ignore[arg-type]
    assert perf.serving is not None and perf.serving.offered_rate == pytest.approx(100.0)
    assert perf.serving.rate == 100.0 == perf.serving.capacity_rate
    assert [point["rate"] for point in perf.serving.curve] == [100.0]
