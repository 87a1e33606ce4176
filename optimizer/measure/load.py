"""A candidate under offered load: its serving measurement at the selection rate, and its load
curve and capacity over `workload.rates`.

The engine serves the stream itself when it can (continuous batching, a server); any other engine
gets a queue in front of it (static batching, `backends/queued.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from optimizer.backends.base import Engine
from optimizer.backends.queued import QueuedServer, serving_engine
from optimizer.config import WorkloadConfig
from optimizer.measure.energy import EnergyMeter
from optimizer.measure.serving import measure_serving
from optimizer.measure.stream import RequestStream
from optimizer.measure.workload import PerformanceResult, check_deadline

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
    """The serving measurement at `cfg.rate` (`cfg.repeats` runs), after one run at each other
    load of `cfg.rates`; the result's `serving` carries the whole curve and the capacity."""
    longest = max(s.longest_request_tokens for s in streams.values())
    server: Any = serving_engine(engine, batch_size, longest)
    counters = getattr(server, "prefix_counters", None)
    try:
        curve: list[dict[str, float]] = []
        for rate in sorted(streams):
            if rate == cfg.rate:
                continue
            point = _measure(server, streams[rate], meter, cfg, rate, 1)
            curve.append(curve_point(point))
            check_deadline(deadline)
        before = counters() if counters else {}
        result = _measure(server, streams[cfg.rate], meter, cfg, cfg.rate, cfg.repeats, stop_below, deadline)
        prefix = _difference(counters(), before) if counters else {}
    finally:
        if isinstance(server, QueuedServer):
            server.close()
    assert result.serving is not None
    curve = sorted([*curve, curve_point(result)], key=lambda p: p["rate"])
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
) -> PerformanceResult:
    return measure_serving(
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
    )


def curve_point(result: PerformanceResult) -> dict[str, float]:
    serving = result.serving
    assert serving is not None
    return {
        "rate": serving.rate,
        "goodput_tokens_per_joule": result.goodput_tokens_per_joule.mean,
        "tokens_per_joule": result.tokens_per_joule.mean,
        "ttft_p90_ms": result.latency.ttft_ms["p90"],
        "tpot_p90_ms": result.latency.tpot_ms["p90"],
        "met_slo_fraction": serving.met_slo_fraction,
        "growing": float(serving.growing_windows > 0),
    }


def capacity(curve: list[dict[str, float]]) -> float | None:
    """The highest offered load at which >= 90% of requests met the SLO, or None."""
    held = [p["rate"] for p in curve if p["met_slo_fraction"] >= CAPACITY_SLO_FRACTION]
    return max(held) if held else None


def _difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters over the selection-rate runs only; a fraction is recomputed from its counts."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if k != "prefill_saved_fraction"}
    if "prompt_tokens" in delta and "reused_prompt_tokens" in delta:
        prompt = delta["prompt_tokens"]
        delta["prefill_saved_fraction"] = delta["reused_prompt_tokens"] / prompt if prompt else 0.0
    return delta
