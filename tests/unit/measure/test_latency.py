"""Percentiles and the per-request SLO test behind goodput."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.config import SloConfig
from optimizer.measure.latency import LatencySummary, percentile, request_meets_slo, slo_violations


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.exponential(0.05, size=n).tolist()
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-15)


def test_percentile_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 50) == 2.0
    assert values == [3.0, 1.0, 2.0]


def test_latency_summary_is_in_milliseconds() -> None:
    summary = LatencySummary.of([0.1, 0.2, 0.3], [0.01, 0.02, 0.03])
    assert summary.requests == 3
    assert summary.ttft_ms["p50"] == pytest.approx(200.0)
    assert summary.tpot_ms["p50"] == pytest.approx(20.0)
    assert set(summary.ttft_ms) == {"p50", "p90", "p99"}
    assert summary.to_dict()["tpot_ms"]["p90"] == pytest.approx(28.0)


def test_request_meets_slo_checks_both_limits() -> None:
    slo = SloConfig(percentile=90, ttft_ms=500, tpot_ms=50)
    assert request_meets_slo(0.4, 0.04, slo)
    assert not request_meets_slo(0.6, 0.04, slo)  # first token too late
    assert not request_meets_slo(0.4, 0.06, slo)  # decode too slow
    assert request_meets_slo(0.5, 0.05, slo)  # the limit itself is inside


def test_request_meets_slo_with_no_limits() -> None:
    slo = SloConfig(ttft_ms=None, tpot_ms=None)
    assert request_meets_slo(1e6, 1e6, slo)
    assert request_meets_slo(10.0, 0.001, SloConfig(ttft_ms=None, tpot_ms=5))
    assert not request_meets_slo(0.001, 10.0, SloConfig(ttft_ms=None, tpot_ms=5))


def test_slo_violations_name_the_fields_at_the_percentile() -> None:
    slo = SloConfig(percentile=50, ttft_ms=100, tpot_ms=10)
    ttft = [0.05, 0.2, 0.3]  # p50 200 ms > 100
    tpot = [0.005, 0.008, 0.5]  # p50 8 ms <= 10
    broken = slo_violations(ttft, tpot, slo)
    assert len(broken) == 1
    assert "workload.slo.ttft_ms" in broken[0] and "p50" in broken[0] and "200 ms" in broken[0]
    # at p90 the decode outlier counts too
    broken = slo_violations(ttft, tpot, SloConfig(percentile=90, ttft_ms=100, tpot_ms=10))
    assert any("workload.slo.tpot_ms" in b for b in broken)
    assert any("workload.slo.ttft_ms" in b for b in broken)


def test_slo_violations_with_none_limits_is_empty() -> None:
    assert slo_violations([9.0], [9.0], SloConfig(ttft_ms=None, tpot_ms=None)) == []
    assert slo_violations([9.0], [0.001], SloConfig(ttft_ms=None, tpot_ms=5)) == []
