"""TPOT figures come from the requests the window judges only. Where none of them got two tokens
(every one asked for one, or all were given up), `measure_serving` took the TPOTs of the warm-up
and drain requests instead: the rules judge a serving run on its steady state, and those requests
are outside it, so their TPOT failed (or passed) a run none of whose judged requests has a TPOT."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.config import LengthConfig, SloConfig, WorkloadConfig
from optimizer.measure import load
from optimizer.measure.energy import Measurement
from optimizer.measure.serving import RequestRecord, ServingRun, ServingWindow
from optimizer.measure.stream import TextTokens, generate_stream

SLO = SloConfig(tpot_ms=50)  # p90
WARMUP, DRAIN, REQUESTS = 2, 2, 10


def _record(index: int) -> RequestRecord:
    """Warm-up and drain requests: 5 tokens 200 ms apart (a cold engine). Judged ones: one token."""
    start = index * 0.01 + 0.005
    if WARMUP <= index < REQUESTS - DRAIN:
        return RequestRecord(index, index * 0.01, index * 0.01, (start,), 8, 1, True)
    times = tuple(start + i * 0.2 for i in range(5))
    return RequestRecord(index, index * 0.01, index * 0.01, times, 8, 5, False)


def test_no_judged_tpot_takes_none_from_the_warmup_or_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = WorkloadConfig(
        kind="serving",
        requests=REQUESTS,
        rate=100.0,
        arrivals="constant",
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", 1, 1, 64),
        warmup_requests=WARMUP,
        drain_requests=DRAIN,
    )
    stream = generate_stream(cfg, TextTokens(list(range(100, 200))))
    records = [_record(i) for i in range(REQUESTS)]
    last = REQUESTS - DRAIN - 1
    window = ServingWindow(0.02, 0.08, WARMUP, last, 6, 6, 6, 0.0, 1.0, False)
    measurement = Measurement(source="fake", joules=10.0, seconds=1.0, idle_watts=2.0)

    def serve(*_: Any, **__: Any) -> ServingRun:
        return ServingRun(records, window, measurement, 0.0, None)

    monkeypatch.setattr(load, "serve_stream", serve)

    class Meter:
        source, idle_watts = "fake", 2.0

    perf = load.measure_serving(Any, stream, Meter(), SLO, 1, WARMUP, DRAIN, 100.0)  # type: ignore[arg-type]
    # every judged request met the SLO on its own (one token: no TPOT to miss)
    assert perf.serving is not None and perf.serving.met_slo_fraction == 1.0
    assert perf.slo_met, perf.slo_violations  # not failed on the warm-up's and drain's 200 ms
    assert perf.latency.tpot_ms["p90"] < 200  # no figure of theirs
