"""Capacity from a load curve: a load whose queue grew, or whose SLO verdict failed, is not held,
though >= 90% of its window's requests met the SLO."""

from __future__ import annotations

from collections.abc import Sequence

from optimizer.config import SloConfig
from optimizer.measure.load import capacity, curve_point, measure_serving

from .measure.test_serving import FifoServer, WattMeter, stream


def point(rate: float, met: float, growing: bool = False, slo_met: bool = True) -> dict[str, float]:
    return {"rate": rate, "met_slo_fraction": met, "growing": float(growing), "slo_met": float(slo_met)}


def test_capacity_is_the_highest_load_held_without_a_growing_queue_or_a_broken_verdict() -> None:
    assert capacity([point(1, 1.0), point(2, 0.95), point(4, 0.5)]) == 2
    assert capacity([point(1, 1.0), point(2, 1.0, growing=True)]) == 1
    assert capacity([point(1, 1.0), point(2, 0.9, slo_met=False)]) == 1
    assert capacity([point(1, 0.95, growing=True)]) is None
    # a curve stored before the verdict was kept has no "slo_met": its share alone decides
    assert capacity([{"rate": 3.0, "met_slo_fraction": 0.95, "growing": 0.0}]) == 3


def test_a_load_whose_queue_grew_is_not_the_capacity_though_every_request_met_a_loose_slo() -> None:
    """25 ms a request, one at a time, offered 100 req/s: the queue grows all run long, yet a
    40-request stream ends before any TTFT reaches 5 s. The same result warns that the rate is
    above the candidate's capacity; it was also recorded as the capacity."""
    slow = FifoServer(slots=1, ttft=0.005, tpot=0.005)
    slo = SloConfig(ttft_ms=5000, tpot_ms=50)
    perf = measure_serving(slow, stream(requests=40), WattMeter(), slo, 1, 4, 4, 100.0)
    assert perf.serving is not None and perf.serving.met_slo_fraction == 1.0
    assert perf.serving.growing_windows == 1
    assert "above this candidate's capacity" in perf.windows[0].warnings[0]
    assert capacity([curve_point(perf)]) is None


def test_a_load_whose_slo_verdict_failed_is_not_the_capacity_at_exactly_90_percent_met() -> None:
    """10 requests judged, 9 met: 90% counted the load as held, while its verdict (the one request
    given up counts at p90) failed, and the infeasible-rate error named that rate as the capacity."""

    class OneStalled(FifoServer):
        def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
            self.ttft = 1.5 if len(self.submitted) == 10 else 0.01  # index 10: judged (2 to 11)
            return super().submit(prompt_ids, max_new_tokens)

    slo = SloConfig(ttft_ms=100, tpot_ms=50)
    perf = measure_serving(OneStalled(), stream(requests=14), WattMeter(), slo, 1, 2, 2, 100.0, 3.0)
    assert perf.serving is not None and perf.serving.met_slo_fraction == 0.9
    assert not perf.slo_met
    assert capacity([curve_point(perf)]) is None
