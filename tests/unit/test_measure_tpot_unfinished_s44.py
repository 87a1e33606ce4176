"""The TPOT verdict counts requests given up unfinished above every timed one, also where they
only shift the percentile's rank (not onto themselves): left out, the percentile is taken over
the finished requests alone and a run whose SLO breaks with them counted passed."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.config import LengthConfig, SloConfig, WorkloadConfig
from optimizer.measure import load
from optimizer.measure.energy import Measurement
from optimizer.measure.latency import unfinished_tpot_violation, unfinished_violation
from optimizer.measure.serving import RequestRecord, ServingRun, ServingWindow
from optimizer.measure.stream import TextTokens, generate_stream

SLO = SloConfig(tpot_ms=50)  # p90


def _tpots(fast: int, slow: int) -> list[float]:
    return [0.010] * fast + [0.100] * slow


def test_unfinished_requests_that_shift_the_rank_break_the_target() -> None:
    # 19 timed: p90 (rank 16.2) is 28 ms. With the unfinished one above them (20 values, rank
    # 17.1) it is 100 ms: the target is broken, though not by an unbounded value
    timed = _tpots(17, 2)
    assert not unfinished_violation(len(timed), 1, SLO)  # not unbounded: that check passes it
    broken = unfinished_tpot_violation(timed, 1, SLO)
    assert len(broken) == 1 and "given up unfinished" in broken[0] and "100 ms" in broken[0], broken


@pytest.mark.parametrize(
    ("timed", "unfinished", "expected"),
    [
        (_tpots(17, 2), 0, []),  # nothing unfinished
        (_tpots(18, 1), 1, []),  # rank 17.1 of [10 x 18, 100, unbounded]: 10 + 90 * 0.1 = 19 ms
        (_tpots(9, 0), 1, ["unbounded"]),  # the unfinished one is at the rank: unfinished_violation's
        (_tpots(15, 4), 0, []),  # no unfinished: the timed percentile's own verdict decides
        (_tpots(15, 4), 1, []),  # timed alone breaks it: slo_violations names it, not twice
    ],
)
def test_only_a_break_the_other_checks_miss_is_added(
    timed: list[float], unfinished: int, expected: list[str]
) -> None:
    found = unfinished_tpot_violation(timed, unfinished, SLO)
    assert [("unbounded" if "unbounded" in v else v) for v in found] == expected
    assert not unfinished_tpot_violation(timed, unfinished, SloConfig(ttft_ms=100, tpot_ms=None))


def _record(index: int, tpot: float | None) -> RequestRecord:
    if tpot is None:  # given up unfinished, its first token never told
        return RequestRecord(index, index * 0.01, index * 0.01, (), 8, 5, False, gave_up_at=5.0)
    times = tuple(index * 0.01 + 0.005 + i * tpot for i in range(5))
    return RequestRecord(index, index * 0.01, index * 0.01, times, 8, 5, tpot <= 0.05)


def test_measure_serving_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = WorkloadConfig(
        kind="serving",
        requests=20,
        rate=100.0,
        arrivals="constant",
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", 5, 1, 64),
        warmup_requests=0,
        drain_requests=0,
    )
    stream = generate_stream(cfg, TextTokens(list(range(100, 200))))
    records = [_record(i, t) for i, t in enumerate([*_tpots(17, 2), None])]
    window = ServingWindow(0.0, 1.0, 0, 19, 60, 50, 19, 0.0, 3.0, False)
    measurement = Measurement(source="fake", joules=10.0, seconds=1.0, idle_watts=2.0)

    def serve(*_: Any, **__: Any) -> ServingRun:
        return ServingRun(records, window, measurement, 0.0, None)

    monkeypatch.setattr(load, "serve_stream", serve)

    class Meter:
        source, idle_watts = "fake", 2.0

    perf = load.measure_serving(Any, stream, Meter(), SloConfig(tpot_ms=50), 1, 0, 0, 100.0)  # type: ignore[arg-type]
    assert perf.latency.tpot_ms["p90"] == pytest.approx(28.0)  # the finished requests' own figure
    assert not perf.slo_met, perf.slo_violations
    assert any("given up unfinished" in v for v in perf.slo_violations)
