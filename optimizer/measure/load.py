"""A candidate under offered load: its serving measurement at the selection rate (`measure_serving`:
the repeated runs of `serving.serve_stream` at one rate, summed up), and its load curve and capacity
over `workload.rates`.

The engine serves the stream itself when it can (continuous batching, a server); any other engine
gets a queue in front of it (static batching, `backends/queued.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from optimizer.backends.base import Engine
from optimizer.backends.queued import QueuedServer, serving_engine
from optimizer.config import SloConfig, WorkloadConfig
from optimizer.measure.energy import EnergyMeter, undisturbed
from optimizer.measure.latency import LatencySummary, percentile, slo_violations, unfinished_tpot_violation
from optimizer.measure.serving import (
    DRAIN_TIMEOUT_SECONDS,
    RequestRecord,
    ServingEngine,
    ServingRun,
    serve_stream,
    summarize,
    ttft_seconds,
)
from optimizer.measure.setup import selection_rate
from optimizer.measure.stream import RequestStream
from optimizer.measure.workload import PerformanceResult, WindowResult, check_deadline, screened_out

CAPACITY_SLO_FRACTION = 0.9  # capacity: the highest offered load at which this share meets the SLO


def measure_load(
    engine: Engine,
    batch_size: int,
    streams: dict[float, RequestStream],
    meter: EnergyMeter,
    cfg: WorkloadConfig,
    deadline: float | None = None,
    stop_below: float | None = None,
) -> PerformanceResult:
    """The serving measurement at the selection rate (`cfg.rate`, or a trace's own; `cfg.repeats`
    runs), after one run at each other load of `cfg.rates`; the result's `serving` carries the
    whole curve and the capacity."""
    selected = selection_rate(cfg, streams)
    longest = max(s.longest_request_tokens for s in streams.values())
    server: Any = serving_engine(engine, batch_size, longest)
    counters = getattr(server, "prefix_counters", None)
    try:
        curve: list[dict[str, float]] = []
        for rate in sorted(streams):
            if rate == selected:
                continue
            point, runs = _measure(server, streams[rate], meter, cfg, rate, 1)
            curve.append(curve_point(point, submitted_rate(runs)))
            check_deadline(deadline)
        before = counters() if counters else {}
        result, runs = _measure(
            server, streams[selected], meter, cfg, selected, cfg.repeats, stop_below, deadline
        )
        prefix = _difference(counters(), before) if counters else {}
    finally:
        if isinstance(server, QueuedServer):
            server.close()
    assert result.serving is not None
    curve = sorted([*curve, curve_point(result, submitted_rate(runs))], key=lambda p: p["rate"])
    serving = dataclasses.replace(result.serving, prefix=prefix, curve=curve, capacity_rate=capacity(curve))
    return dataclasses.replace(result, serving=serving)


def _measure(
    server: Any,
    stream: RequestStream,
    meter: EnergyMeter,
    cfg: WorkloadConfig,
    rate: float,
    repeats: int,
    stop_below: float | None = None,
    deadline: float | None = None,
) -> tuple[PerformanceResult, list[ServingRun]]:
    runs: list[ServingRun] = []
    result = measure_serving(
        server,
        stream,
        meter,
        cfg.slo,
        repeats,
        cfg.warmup_requests,
        cfg.drain_requests,
        rate,
        stop_below=stop_below,
        disturbed_retries=cfg.disturbed_retries,
        deadline=deadline,
        min_window_seconds=cfg.min_window_seconds,
        runs=runs,
    )
    return result, runs


def curve_point(result: PerformanceResult, submitted: float | None = None) -> dict[str, float]:
    """One load's point: `rate` the nominal load (workload.rates), `offered_rate` the load its
    stream's arrivals make (a short random stream's differ from it), `submitted_rate` (where known)
    the slowest of its runs' actual submissions."""
    serving = result.serving
    assert serving is not None
    return {
        "rate": serving.rate,
        "offered_rate": serving.offered_rate,
        **({} if submitted is None else {"submitted_rate": submitted}),
        "goodput_tokens_per_joule": result.goodput_tokens_per_joule.mean,
        "tokens_per_joule": result.tokens_per_joule.mean,
        "ttft_p90_ms": result.latency.ttft_ms["p90"],
        "tpot_p90_ms": result.latency.tpot_ms["p90"],
        "met_slo_fraction": serving.met_slo_fraction,
        "growing": float(serving.growing_windows > 0),
        "slo_met": float(result.slo_met),
    }


def capacity(curve: list[dict[str, float]]) -> float | None:
    """The highest offered load at which >= 90% of requests met the SLO, or None. A load whose
    queue grew is over capacity whatever the share (a short stream ends before it fails), and one
    whose SLO verdict failed is not held: the infeasible-rate error would name it as the capacity
    (exactly 90% met leaves p90 interpolated towards the misses, and given-up requests count)."""
    held = [
        p["rate"]
        for p in curve
        if p["met_slo_fraction"] >= CAPACITY_SLO_FRACTION
        and not p.get("growing", 0.0)
        and p.get("slo_met", 1.0)
    ]
    return max(held) if held else None


def submitted_rate(runs: list[ServingRun]) -> float:
    """Requests/s between the first and last submission, of the run that submitted slowest: the
    load actually offered, which a load generator kept from the CPU falls behind."""
    rates = []
    for run in runs:
        times = [r.submitted for r in run.requests]
        span = max(times) - min(times) if times else 0.0
        rates.append((len(times) - 1) / span if span > 0 else float("inf"))
    return min(rates)


def _difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters over the selection-rate runs only; a fraction is recomputed from its counts."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if k != "prefill_saved_fraction"}
    if "prompt_tokens" in delta and "reused_prompt_tokens" in delta:
        prompt = delta["prompt_tokens"]
        delta["prefill_saved_fraction"] = delta["reused_prompt_tokens"] / prompt if prompt else 0.0
    return delta


def measure_serving(
    engine: ServingEngine,
    stream: RequestStream,
    meter: EnergyMeter,
    slo: SloConfig,
    repeats: int,
    warmup_requests: int,
    drain_requests: int,
    rate: float,
    drain_timeout_seconds: float = DRAIN_TIMEOUT_SECONDS,
    stop_below: float | None = None,
    disturbed_retries: int = 0,
    deadline: float | None = None,
    min_window_seconds: float = 0.0,
    runs: list[ServingRun] | None = None,
) -> PerformanceResult:
    """`repeats` runs of the stream offered at `rate`, each one energy window over its steady
    state, fewer when the runs so far are screened out below `stop_below` (see
    `workload.screened_out`); a run whose CPU time was taken from it is run again up to
    `disturbed_retries` times (`energy.undisturbed`). Past `deadline` (time.perf_counter) no
    further run starts: CandidateTimeout. A window shorter than `min_window_seconds` is flagged,
    not lengthened: repeating requests would change the stream measured. The caller adds prefix
    counters and the load curve to `serving`; `runs`, given, receives the runs."""
    runs = [] if runs is None else runs
    windows: list[WindowResult] = []
    for index in range(repeats):
        if index:  # a stalled engine's run lasts until the drain gives up (up to 2 minutes)
            check_deadline(deadline)
        run, notes = undisturbed(
            lambda: serve_stream(
                engine, stream, meter, slo, warmup_requests, drain_requests, drain_timeout_seconds
            ),
            lambda kept: kept.measurement,
            disturbed_retries,
        )
        runs.append(run)
        m, w = run.measurement, run.window
        warnings = [*notes, *m.warnings]
        if w.growing:
            warnings.append(
                f"requests in flight kept growing ({w.mean_in_flight:.1f} on average): "
                f"{stream.offered_rate:.2f} req/s is above this candidate's capacity"
            )
        if w.seconds < min_window_seconds:
            warnings.append(
                f"window {w.seconds:.2f} s < workload.min_window_seconds {min_window_seconds:g} s: "
                "more workload.requests (a trace: a longer one) or a lower workload.rate lengthen it"
            )
        unknown = sum(not r.ttft_known for r in run.requests if w.judges(r))
        if unknown:
            warnings.append(
                f"{unknown} request(s) given up unfinished with no first-token time told by the engine: "
                "TTFT unknown"
            )
        windows.append(WindowResult.of(m, w.output_tokens, w.goodput_tokens, warnings, run.cpu_probe_mibps))
        if screened_out(windows, repeats, stop_below):
            break
    judged = [r for run in runs for r in run.requests if run.window.judges(r)]
    # a request given up with no first-token time told is left out (its time to the give-up would
    # count a first token that may have come long before); the verdict still counts it as a miss
    # (`unfinished_violation`, or else `unknown_ttft_violation`)
    ttfts = ttft_seconds(judged)
    # a request that got fewer than two tokens (given up on, or asked for one) has no time per
    # output token: counted as 0 ms it would pull the TPOT percentiles of an overloaded run down
    timed = [r.tpot for r in judged if r.output_tokens > 1]
    # none judged got two tokens: no TPOT measured (0 ms, as each one's own verdict took it), not
    # the warm-up's or drain's: the window does not judge them (DESIGN: a steady state is measured)
    tpots = timed or [0.0]
    unfinished = sum(not r.token_times for r in judged)
    violations = slo_violations(ttfts, tpots, slo) + unfinished_tpot_violation(timed, unfinished, slo)
    return PerformanceResult.of_windows(
        windows,
        idle_watts=meter.idle_watts,
        latency=LatencySummary.of(ttfts, tpots, slo.percentile),
        slo_violations=violations or unknown_ttft_violation(judged, slo),
        serving=summarize(runs, stream, rate),
    )


def unknown_ttft_violation(judged: list[RequestRecord], slo: SloConfig) -> list[str]:
    """The TTFT target broken once the requests with no TTFT known count as missing it, for a run
    nothing else failed: left out of the TTFT percentile, they must not pass a TTFT-only SLO that
    counting them (as before they were left out, at their time to the give-up) would break."""
    known = sorted(r.ttft for r in judged if r.ttft_known)
    unknown = len(judged) - len(known)
    if slo.ttft_ms is None or not unknown or not known:  # none known: the percentile took them all
        return []
    # the percentile with each unknown one unbounded, so above every known one
    rank = (len(judged) - 1) * slo.percentile / 100
    low = int(rank)
    if (
        low + (rank > low) < len(known)
        and 1000 * percentile(known[low : low + 2], 100 * (rank - low)) <= slo.ttft_ms
    ):
        return []
    return [
        f"TTFT p{slo.percentile:g} unknown: {unknown} of {len(judged)} requests in the windows were given up "
        f"unfinished with no first-token time told, counted as missing workload.slo.ttft_ms {slo.ttft_ms:g}"
    ]
