"""Selection: a candidate that gave up requests is an overload, not a near miss, even where a
latency percentile is also just over its target."""

from __future__ import annotations

from dataclasses import replace

import pytest

from optimizer.config import SearchConfig, SloConfig
from optimizer.measure.latency import LatencySummary
from optimizer.results import CandidateResult
from optimizer.search.finalists import finalist_pool
from optimizer.select import near_misses

from .factories import candidate_result, performance_result, torch_candidate

SLO = SloConfig(tpot_ms=250.0, ttft_ms=500.0)
TPOT_OVER = "TPOT p90 270 ms > workload.slo.tpot_ms 250"
GIVEN_UP = (
    "TPOT p90 unbounded: 9 of 20 requests in the windows were given up unfinished > workload.slo.tpot_ms 250"
)
UNKNOWN_TTFT = (
    "TTFT p90 unknown: 3 of 20 requests in the windows were given up unfinished with no first-token "
    "time told, counted as missing workload.slo.ttft_ms 500"
)


def result(batch: int, goodput: float, tpot_s: float, violations: tuple[str, ...] = ()) -> CandidateResult:
    performance = performance_result(goodput, slo_violations=violations)
    latency = LatencySummary.of([0.1] * 3, [tpot_s] * 3)
    return candidate_result(
        torch_candidate(batch_size=batch), performance=replace(performance, latency=latency)
    )


@pytest.mark.parametrize("given_up", [GIVEN_UP, UNKNOWN_TTFT])
def test_a_near_percentile_with_requests_given_up_is_no_near_miss(given_up: str) -> None:
    """TPOT p90 8% over its target and requests given up unfinished: it counted as a near miss and
    was re-measured as a finalist, though the same overload without the percentile was not."""
    feasible = result(1, 1.0, 0.1)
    mixed = result(8, 3.0, 0.27, (TPOT_OVER, given_up))
    near = result(16, 3.0, 0.27, (TPOT_OVER,))
    assert near_misses([feasible, mixed, near], SLO, 0.25) == [near]
    pool = finalist_pool([feasible, mixed, near], SearchConfig(finalists=3), SLO)
    assert mixed not in pool and near in pool
