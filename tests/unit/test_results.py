"""CandidateResult: feasibility, the objective, serialization and re-judging under a new bound."""

from __future__ import annotations

import json
from dataclasses import replace

from optimizer.config import QualityConfig
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED, CandidateResult

LOOSE = QualityConfig(max_ppl_increase=0.10, min_top1_agreement=0.90, max_kl=0.15)
STRICT = QualityConfig(max_ppl_increase=0.01, min_top1_agreement=0.98, max_kl=0.01)


def test_round_trip_through_json(make_result, make_candidate, make_quality, make_performance) -> None:
    result = make_result(
        candidate=make_candidate(batch_size=8, precision="bf16"),
        quality=make_quality(mean_kl=0.02, ppl_increase=0.01, top1_agreement=0.97),
        performance=make_performance(goodput_tokens_per_joule=3.0, slo_violations=["TPOT too slow"]),
        role="baseline",
        build_seconds=1.5,
        seconds=9.0,
        finished_at="2026-01-01T00:00:00+00:00",
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["label"] == result.candidate.label()
    again = CandidateResult.from_dict(data)
    assert again == result
    assert again.reused is False


def test_round_trip_of_a_failed_result(make_result) -> None:
    failed = make_result(status=FAILED, reason="RuntimeError: out of memory")
    again = CandidateResult.from_dict(json.loads(json.dumps(failed.to_dict())))
    assert again == failed
    assert again.quality is None and again.performance is None


def test_feasible_needs_measured_and_the_slo(make_result, make_performance, make_quality) -> None:
    assert make_result(performance=make_performance(), quality=make_quality()).feasible
    assert not make_result(performance=make_performance(slo_violations=["x"])).feasible
    assert not make_result(status=REJECTED, performance=make_performance()).feasible
    assert not make_result(performance=None).feasible
    assert not make_result(status=FAILED).feasible


def test_objective_is_goodput_tokens_per_joule(make_result, make_performance) -> None:
    assert make_result(performance=make_performance(goodput_tokens_per_joule=2.5)).objective == 2.5
    assert make_result(status=FAILED).objective == 0.0


def test_rejudged_under_a_stricter_bound_rejects(make_result, make_quality, make_performance) -> None:
    measured = make_result(quality=make_quality(mean_kl=0.05), performance=make_performance())
    assert measured.rejudged(LOOSE) == replace(measured, reason=None)
    stricter = measured.rejudged(STRICT)
    assert stricter is not None
    assert stricter.status == REJECTED
    assert "quality.max_kl" in str(stricter.reason)
    assert stricter.performance == measured.performance  # the measurement is kept, just not feasible
    assert not stricter.feasible


def test_rejudged_under_a_looser_bound_needs_measuring(make_result, make_quality) -> None:
    rejected = make_result(status=REJECTED, reason="KL too high", quality=make_quality(mean_kl=0.05))
    assert rejected.rejudged(LOOSE) is None  # passes now, but there is no energy number
    still = rejected.rejudged(STRICT)
    assert still is not None and still.status == REJECTED


def test_rejudged_restores_a_measured_result(make_result, make_quality, make_performance) -> None:
    # e.g. the baseline: measured although it broke the bound of an earlier run
    was_rejected = make_result(
        status=REJECTED, reason="KL", quality=make_quality(mean_kl=0.05), performance=make_performance()
    )
    judged = was_rejected.rejudged(LOOSE)
    assert judged is not None
    assert judged.status == MEASURED and judged.reason is None
    assert judged.feasible


def test_rejudged_leaves_failed_and_pruned_alone(make_result, make_quality) -> None:
    failed = make_result(status=FAILED, reason="boom")
    assert failed.rejudged(STRICT) is failed
    pruned = make_result(status=PRUNED, reason="memory")
    assert pruned.rejudged(LOOSE) is pruned
    no_quality = make_result(status=MEASURED, quality=None)
    assert no_quality.rejudged(STRICT) is no_quality
