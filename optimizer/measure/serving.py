"""Measuring a serving run: a load generator submits each request at its arrival time while the
engine runs, and every token's timestamp decides latencies, goodput and the window's tokens.

Per request: TTFT from its *arrival* to its first token (queueing included), TPOT the mean gap
between its tokens, end-to-end latency. The energy window is the steady state: it opens at the
arrival of the first request after `warmup_requests` and closes at the arrival of the request
`drain_requests` before the last, while load is still being offered (as ML.ENERGY's benchmark
drops warm-up and drain). Tokens count in the window by their timestamps; goodput counts the
window's tokens of requests that met both TTFT and TPOT targets. A window during which the number
of requests in flight kept growing is flagged: the rate is above what the engine holds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from optimizer.config import SloConfig
from optimizer.measure.latency import (
    percentile,
    request_meets_slo,
)
from optimizer.measure.speed import cpu_probe_mibps, warn_if_slow
from optimizer.measure.stream import window_bounds
from optimizer.measure.workload import (
    ServingSummary,
)

if TYPE_CHECKING:
    from optimizer.measure.energy import EnergyMeter, Measurement
    from optimizer.measure.stream import RequestStream

START_LEAD_SECONDS = 0.05  # the first arrival is this far after the load generator starts
DRAIN_TIMEOUT_SECONDS = 120.0  # the most a run waits for its last requests after the last arrival
GROWTH_FLAG = 1.5  # in-flight requests in the window's second half over its first half


@dataclass(frozen=True)
class Completion:
    """A finished request as an engine reports it: its token ids and each token's time (host
    perf_counter seconds). `error` set: the request failed."""

    request_id: str
    token_ids: tuple[int, ...]
    token_times: tuple[float, ...]
    error: str | None = None


class ServingEngine(Protocol):
    """An engine that schedules requests itself (continuous batching, or a queue in front of a
    batch engine). `submit` must not block on generation."""

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        """Queue one request; returns its id."""
        ...

    def collect(self, timeout_seconds: float) -> list[Completion]:
        """Requests finished since the last call, waiting at most `timeout_seconds` for one."""
        ...

    def cancel_all(self) -> None:
        """Drop every unfinished request; returns once the engine is idle again."""
        ...

    # Optional: `forget_cached_prefixes()`, called before each run of a stream by an engine whose
    # prefix cache outlives requests, so that one run's prompts are not found cached by the next.
    # Optional: `first_token_times() -> dict[str, float | None]`, called when a run gives up on its
    # last requests, before `cancel_all`: for each unfinished request whose state the engine
    # knows, its first token's time (perf_counter), or None while it has none (still queued). A
    # request left out has no TTFT known: `collect` reports finished requests only.


@dataclass(frozen=True)
class RequestRecord:
    """One served request. Times in seconds from the run's start (t0). A request still unfinished
    when the run gave up (at `gave_up_at`) has no token times, and its TTFT is what the engine
    told (`ServingEngine.first_token_times`): exact with its `first_token` time, at least
    `gave_up_at - arrival` when it had no token then (`no_first_token`: still queued), unknown
    otherwise (`ttft_known` False)."""

    index: int
    arrival: float
    submitted: float
    token_times: tuple[float, ...]
    prompt_tokens: int
    asked_tokens: int
    met_slo: bool
    gave_up_at: float | None = None
    first_token: float | None = None
    no_first_token: bool = False

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_known(self) -> bool:
        """Whether `ttft` is the TTFT or (`no_first_token`) a lower bound of it. False: given up on
        with no first-token time told, its `ttft` is the time to the give-up and bounds nothing
        (its first token may have come long before)."""
        return bool(self.token_times) or self.first_token is not None or self.no_first_token

    @property
    def ttft(self) -> float:
        if self.token_times:
            return self.token_times[0] - self.arrival
        if self.first_token is not None:
            return self.first_token - self.arrival
        return float(self.gave_up_at or 0.0) - self.arrival

    @property
    def tpot(self) -> float:
        times = self.token_times
        return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0

    @property
    def e2e(self) -> float:
        return (self.token_times[-1] if self.token_times else float(self.gave_up_at or 0.0)) - self.arrival


@dataclass(frozen=True)
class ServingWindow:
    """The steady-state window of one run of the stream. Units: seconds, joules, tokens."""

    start: float
    end: float
    first: int  # index of the request whose arrival opened the window
    last: int  # index of the request whose arrival closed it
    output_tokens: int
    goodput_tokens: int
    requests_completed: int
    idle_fraction: float  # share of the window with no request in flight
    mean_in_flight: float
    growing: bool  # in-flight requests kept growing: the offered rate exceeds the capacity

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def judges(self, record: RequestRecord) -> bool:
        """Whether a request is judged in this window: it arrived from the opening request to the
        closing one. By index, not by time: the window opens just after its first request's
        arrival (the meter starts first), and requests sharing an arrival time all count."""
        return self.first <= record.index <= self.last


@dataclass(frozen=True)
class ServingRun:
    requests: list[RequestRecord]
    window: ServingWindow
    measurement: Measurement
    lateness_seconds: float  # the most any submission lagged its arrival (the generator's own delay)
    cpu_probe_mibps: float | None = None  # the cores' speed before the run (measure/speed.py)


def serve_stream(
    engine: ServingEngine,
    stream: RequestStream,
    meter: EnergyMeter,
    slo: SloConfig,
    warmup_requests: int,
    drain_requests: int,
    drain_timeout_seconds: float = DRAIN_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
    probe: Callable[[], float] = cpu_probe_mibps,
) -> ServingRun:
    """Offer `stream` to `engine` in real time and measure its steady state.

    After the last arrival the run waits for the requests still in flight only as long as one of
    them could still meet the SLO (its arrival + TTFT target + a TPOT target per further token),
    and never longer than `drain_timeout_seconds`: an engine far over its capacity would otherwise
    take minutes to empty its queue, and no verdict would change. What is left then is cancelled
    and misses the SLO (tokens it produced are not counted: engines return finished requests);
    its first-token times, where the engine tells them, give its TTFT (`RequestRecord`).
    `probe` times the cores' speed before the first request (measure/speed.py).
    """
    forget = getattr(engine, "forget_cached_prefixes", None)
    if forget is not None:  # every run starts cold: no prefixes cached by the run before
        forget()
    speed = probe()  # before any request: the engine is idle, and nothing is timed yet
    warn_if_slow(speed)
    count = len(stream.requests)
    first, last = window_bounds(count, warmup_requests, drain_requests)
    ids: dict[str, int] = {}
    submitted: dict[int, float] = {}
    done: dict[int, Completion] = {}
    window_times: list[float] = []
    lateness = 0.0
    t0 = clock() + START_LEAD_SECONDS
    with ExitStack() as stack:
        measurement: Measurement | None = None
        for request in stream.requests:
            due = t0 + request.arrival_seconds
            while (wait := due - clock()) > 0:
                _take(engine.collect(min(wait, 0.05)), ids, done)
            if request.index == first:
                # NVML: no device-wide synchronize while the engine's thread may capture a graph
                open_window = getattr(meter, "stream_window", meter.window)
                measurement = stack.enter_context(open_window())
                window_times.append(clock() - t0)
            if request.index == last:
                window_times.append(clock() - t0)
                stack.close()
            now = clock()
            lateness = max(lateness, now - due)
            ids[engine.submit(request.prompt_ids, request.max_new_tokens)] = request.index
            submitted[request.index] = now - t0
    give_up = clock() + drain_timeout_seconds
    while len(done) < count and (left := give_up - clock()) > 0:
        _take(engine.collect(min(0.5, left)), ids, done)
        last_chance = max(
            (
                t0 + r.arrival_seconds + _slo_seconds(slo, r.max_new_tokens)
                for r in stream.requests
                if r.index not in done
            ),
            default=give_up,
        )
        give_up = min(give_up, last_chance)
    gave_up_at = None
    told: dict[str, float | None] = {}
    if len(done) < count:
        # before asking: a request told to have no token had none at `gave_up_at`
        gave_up_at = clock() - t0
        first_token_times = getattr(engine, "first_token_times", None)
        told = first_token_times() if first_token_times is not None else {}
        engine.cancel_all()
    started = {ids[i]: t if t is None else t - t0 for i, t in told.items() if i in ids}
    assert measurement is not None and len(window_times) == 2
    records = [
        _record(
            r.index,
            r.arrival_seconds,
            submitted,
            done.get(r.index),
            t0,
            len(r.prompt_ids),
            r.max_new_tokens,
            slo,
            gave_up_at,
            started,
        )
        for r in stream.requests
    ]
    window = _window(records, window_times[0], window_times[1], first, last)
    return ServingRun(records, window, measurement, lateness, speed)


def _slo_seconds(slo: SloConfig, new_tokens: int) -> float:
    """The latest a request can finish after its arrival and still meet the SLO (unbounded parts:
    the drain timeout decides)."""
    if slo.ttft_ms is None or slo.tpot_ms is None:
        return DRAIN_TIMEOUT_SECONDS
    return (slo.ttft_ms + slo.tpot_ms * max(new_tokens - 1, 0)) / 1000


def _take(completions: list[Completion], ids: dict[str, int], done: dict[int, Completion]) -> None:
    for completion in completions:
        if completion.error is not None:
            raise RuntimeError(f"request {completion.request_id} failed: {completion.error}")
        if completion.request_id in ids:
            done[ids[completion.request_id]] = completion


def _record(
    index: int,
    arrival: float,
    submitted: dict[int, float],
    completion: Completion | None,
    t0: float,
    prompt_tokens: int,
    asked: int,
    slo: SloConfig,
    gave_up_at: float | None,
    started: dict[int, float | None],
) -> RequestRecord:
    if completion is None:  # still queued or running when the run gave up
        first, none = started.get(index), index in started and started[index] is None
        return RequestRecord(
            index, arrival, submitted[index], (), prompt_tokens, asked, False, gave_up_at, first, none
        )
    if not completion.token_times:
        raise RuntimeError(f"request {completion.request_id} finished without tokens")
    times = tuple(t - t0 for t in completion.token_times)
    ttft = times[0] - arrival
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    met = request_meets_slo(ttft, tpot, slo)
    return RequestRecord(index, arrival, submitted[index], times, prompt_tokens, asked, met)


def _window(records: list[RequestRecord], start: float, end: float, first: int, last: int) -> ServingWindow:
    """Tokens by their timestamps inside [start, end]. Goodput is that output times the share of
    the tokens asked by the requests judged in the window (`ServingWindow.judges`: those arriving
    from request `first` to request `last`) that went to SLO-meeting requests:
    in a steady state that equals counting the window's tokens of SLO-meeting requests, and over
    capacity it does not credit the window with early requests while later ones queue past it."""
    output = completed = 0
    for r in records:
        output += sum(start <= t <= end for t in r.token_times)
        completed += bool(r.token_times) and start <= r.token_times[-1] <= end
    judged = [r for r in records if first <= r.index <= last]
    asked = sum(r.asked_tokens for r in judged)
    attained = sum(r.asked_tokens for r in judged if r.met_slo) / asked if asked else 0.0
    goodput = round(output * attained)
    idle, mean_first, mean_second = _in_flight(records, start, end)
    return ServingWindow(
        start=start,
        end=end,
        first=first,
        last=last,
        output_tokens=output,
        goodput_tokens=goodput,
        requests_completed=completed,
        idle_fraction=idle,
        mean_in_flight=(mean_first + mean_second) / 2,
        growing=mean_second > GROWTH_FLAG * mean_first + 1,
    )


def _in_flight(records: list[RequestRecord], start: float, end: float) -> tuple[float, float, float]:
    """(idle share, mean in flight over the first half, over the second half) of [start, end]."""
    # an unfinished request stays in flight to the end
    events = sorted(
        [(r.submitted, 1) for r in records] + [(r.token_times[-1], -1) for r in records if r.token_times]
    )
    middle = (start + end) / 2
    halves = ((start, middle), (middle, end))
    area = [0.0, 0.0]
    idle = 0.0
    level = 0
    previous = min([start, *(when for when, _ in events)])
    for when, step in [*events, (max([end, *(when for when, _ in events)]), 0)]:
        # the segment [previous, when) ran at `level` requests in flight; clip it to each half
        for i, (a, b) in enumerate(halves):
            area[i] += level * max(0.0, min(when, b) - max(previous, a))
        if level == 0:
            idle += max(0.0, min(when, end) - max(previous, start))
        level += step
        previous = when
    half = (end - start) / 2
    if half <= 0:
        return 0.0, 0.0, 0.0
    return idle / (end - start), area[0] / half, area[1] / half


def summarize(
    runs: list[ServingRun], stream: RequestStream, rate: float, prefix: dict[str, float] | None = None
) -> ServingSummary:
    judged = [r for run in runs for r in run.requests if run.window.judges(r)]
    completed = sum(run.window.requests_completed for run in runs)
    joules = sum(run.measurement.joules for run in runs)
    return ServingSummary(
        stream=stream.source,
        stream_sha256=stream.sha256,
        rate=rate,
        offered_rate=stream.offered_rate,
        requests=len(stream.requests),
        window_requests=len(judged),
        met_slo_fraction=sum(r.met_slo for r in judged) / len(judged),
        joules_per_request=joules / completed if completed else None,
        idle_fraction=statistics.fmean(run.window.idle_fraction for run in runs),
        mean_in_flight=statistics.fmean(run.window.mean_in_flight for run in runs),
        growing_windows=sum(run.window.growing for run in runs),
        ttft_p90_ms=1000 * percentile(ttft_seconds(judged), 90),
        e2e_p90_ms=1000 * percentile([r.e2e for r in judged], 90),
        max_lateness_ms=1000 * max(run.lateness_seconds for run in runs),
        prefix=dict(prefix or {}),
    )


def ttft_seconds(judged: Sequence[RequestRecord]) -> list[float]:
    """The TTFTs the percentiles take: of the judged requests whose TTFT is known (`ttft_known`).
    None known (all given up on, none told): the times to the give-up, as nothing better is."""
    known = [r.ttft for r in judged if r.ttft_known]
    return known or [r.ttft for r in judged]
