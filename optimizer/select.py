"""Selection: the feasible set, the best candidate in it, and the energy-quality Pareto front."""

from __future__ import annotations

from collections.abc import Sequence

from optimizer.results import MEASURED, CandidateResult


def feasible(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """Inside the quality bound (checked before measuring) and the latency SLO."""
    return [r for r in results if r.feasible]


def select_best(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The feasible candidate with the most goodput tokens per joule (ties: higher throughput)."""
    pool = feasible(results)
    if not pool:
        return None
    return max(
        pool, key=lambda r: (r.objective, r.performance.tokens_per_second.mean if r.performance else 0.0)
    )


def pareto_front(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """Measured, SLO-meeting candidates not dominated in (goodput tokens/J up, mean KL down).

    Quality-rejected candidates have no energy numbers and so are not on the front.
    """
    points = [r for r in results if r.status == MEASURED and r.feasible and r.quality is not None]
    front = []
    for r in points:
        assert r.quality is not None
        dominated = any(
            o.objective >= r.objective
            and o.quality is not None
            and o.quality.mean_kl <= r.quality.mean_kl
            and (o.objective > r.objective or o.quality.mean_kl < r.quality.mean_kl)
            for o in points
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.quality.mean_kl if r.quality else 0.0)
