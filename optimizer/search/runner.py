"""The search loop: baseline first, then the sampler's candidates within the budget.

Finished candidates are appended to the TrialStore as they finish, so a killed search resumes
without repeating them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import FAILED, MEASURED, PRUNED, CandidateResult
from optimizer.search.evaluate import Evaluator, now_iso
from optimizer.search.samplers import make_sampler
from optimizer.space import Candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOutcome:
    baseline: CandidateResult
    baseline_in_space: bool  # else it is measured for the ratios only and cannot be selected
    results: list[CandidateResult]  # every candidate evaluated, reused or pruned, baseline included
    not_reached: list[Candidate]  # cut by the time or candidate budget
    measuring_seconds: float  # wall time spent evaluating in this run (reused results cost none)

    @property
    def selectable(self) -> list[CandidateResult]:
        return [r for r in self.results if r.role != "baseline" or self.baseline_in_space]


def run_search(
    candidates: Sequence[Candidate],
    pruned: Sequence[tuple[Candidate, str]],
    baseline: Candidate,
    evaluator: Evaluator,
    search: SearchConfig,
    bound: QualityConfig,
    progress: Callable[[str], None] = log.info,
) -> SearchOutcome:
    results: list[CandidateResult] = [
        CandidateResult(candidate=c, status=PRUNED, reason=why, finished_at=now_iso()) for c, why in pruned
    ]
    spent = 0.0
    store = evaluator.store
    assert store is not None, "a search records every result in a TrialStore"

    def reusable(candidate: Candidate, role: str) -> CandidateResult | None:
        """A stored result that still holds under this run's bound, or None: must be evaluated."""
        stored = store.get(candidate)
        if stored is None or (stored.status == FAILED and search.retry_failed):
            return None
        judged = stored.rejudged(bound)
        return replace(judged, role=role, reused=True) if judged is not None else None

    def evaluate(candidate: Candidate, role: str) -> CandidateResult:
        nonlocal spent
        result = evaluator.evaluate(candidate, role)
        spent += result.seconds
        store.append(result)
        return result

    total = len(candidates) + (baseline not in candidates)
    base = reusable(baseline, "baseline") or evaluate(baseline, "baseline")
    results.append(base)
    progress(_progress_line(1, total, base))
    sampler = make_sampler(search, [c for c in candidates if c != baseline])
    deadline = time.perf_counter() + search.budget_minutes * 60
    evaluated_new = 0 if base.reused else 1
    not_reached: list[Candidate] = []
    index = 1
    while (candidate := sampler.suggest()) is not None:
        result = reusable(candidate, "candidate")
        if result is None:
            over_budget = time.perf_counter() > deadline or (
                search.max_candidates is not None and evaluated_new >= search.max_candidates
            )
            if over_budget:
                not_reached.append(candidate)
                continue
            result = evaluate(candidate, "candidate")
            evaluated_new += 1
        index += 1
        sampler.observe(candidate, result)
        results.append(result)
        progress(_progress_line(index, total, result))
    if not_reached:
        progress(
            f"budget reached: {len(not_reached)} candidates not measured (search.budget_minutes / max_candidates)"
        )
    return SearchOutcome(
        baseline=base,
        baseline_in_space=baseline in candidates,
        results=results,
        not_reached=not_reached,
        measuring_seconds=spent,
    )


def _progress_line(index: int, total: int, result: CandidateResult) -> str:
    head = f"[{index}/{total}] {result.candidate.label():<40}"
    tag = " (stored)" if result.reused else f" ({result.seconds:.0f} s)"
    if result.status == FAILED:
        return f"{head} FAILED {result.reason}{tag}"
    parts = []
    if result.quality is not None:
        q = result.quality
        parts.append(f"ppl {q.ppl_increase:+.2%} top1 {q.top1_agreement:.1%} KL {q.mean_kl:.4f}")
    if result.status != MEASURED and result.performance is None:
        parts.append(f"{result.status.upper()}: {result.reason}")
    if result.performance is not None:
        p = result.performance
        slo = "SLO ok" if p.slo_met else "SLO missed"
        parts.append(
            f"{p.tokens_per_second.mean:.1f} tok/s | {p.tokens_per_joule.mean:.2f} tok/J "
            f"(goodput {p.goodput_tokens_per_joule.mean:.2f}, {p.source}) | {slo}"
        )
    return f"{head} {' | '.join(parts)}{tag}"
