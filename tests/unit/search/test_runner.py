"""run_search: baseline first, reuse from the store, budgets, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

BOUND = QualityConfig()


class FakeEvaluator:
    """Measures every candidate instantly; remembers what it was asked."""

    def __init__(self, store, make_result, make_quality, make_performance, status=MEASURED) -> None:
        self.store = store
        self.asked: list = []
        self._make = lambda cand, role: make_result(
            candidate=cand,
            status=status,
            reason=None if status == MEASURED else "broken",
            role=role,
            quality=make_quality(mean_kl=0.001) if status != FAILED else None,
            performance=make_performance(goodput_tokens_per_joule=cand.batch_size)
            if status == MEASURED
            else None,
            seconds=0.01,
        )

    def evaluate(self, candidate, role="candidate"):
        self.asked.append((candidate, role))
        return self._make(candidate, role)


@pytest.fixture
def evaluator(tmp_path: Path, make_result, make_quality, make_performance):
    def make(store_path: Path | None = None, status=MEASURED) -> FakeEvaluator:
        store = TrialStore(store_path or tmp_path / "trials.db", "ctx")
        return FakeEvaluator(store, make_result, make_quality, make_performance, status)

    return make


def test_baseline_first_then_the_candidates(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    ev = evaluator()
    lines: list[str] = []
    outcome = run_search(cands, [], cands[0], ev, SearchConfig(), BOUND, progress=lines.append)
    assert ev.asked[0] == (cands[0], "baseline")
    assert [c for c, _ in ev.asked] == cands  # the baseline is not measured twice
    assert outcome.baseline_in_space
    assert outcome.baseline.role == "baseline"
    assert [r.candidate for r in outcome.selectable] == cands
    assert len(lines) == 3 and lines[0].startswith("[1/3]")
    assert outcome.not_reached == []


def test_a_baseline_outside_the_space_is_not_selectable(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (2, 4)]
    base = make_candidate(batch_size=1)
    outcome = run_search(cands, [], base, evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    assert not outcome.baseline_in_space
    assert base not in [r.candidate for r in outcome.selectable]
    assert base in [r.candidate for r in outcome.results]


def test_pruned_candidates_become_results(evaluator, make_candidate) -> None:
    pruned = [(make_candidate(batch_size=512), "needs ~99 GiB")]
    outcome = run_search(
        [make_candidate()],
        pruned,
        make_candidate(),
        evaluator(),
        SearchConfig(),
        BOUND,
        progress=lambda _: None,
    )
    (p,) = [r for r in outcome.results if r.status == PRUNED]
    assert p.reason == "needs ~99 GiB"


def test_stored_results_are_reused(evaluator, make_candidate, tmp_path: Path) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(cands, [], cands[0], evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    again = evaluator()  # a new store instance on the same file: a resumed search
    outcome = run_search(cands, [], cands[0], again, SearchConfig(), BOUND, progress=lambda _: None)
    assert again.asked == []
    assert all(r.reused for r in outcome.results)
    assert outcome.measuring_seconds == 0.0
    assert again.store.run_count() == 0 and len(again.store._records) == 2


def test_failed_results_are_retried_only_when_asked(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(cands, [], cands[0], evaluator(status=FAILED), SearchConfig(), BOUND, progress=lambda _: None)
    kept = evaluator()
    outcome = run_search(cands, [], cands[0], kept, SearchConfig(), BOUND, progress=lambda _: None)
    assert kept.asked == [] and all(r.status == FAILED for r in outcome.results)
    retry = evaluator()
    outcome = run_search(
        cands, [], cands[0], retry, SearchConfig(retry_failed=True), BOUND, progress=lambda _: None
    )
    assert len(retry.asked) == 2 and all(r.status == MEASURED for r in outcome.results)


def test_rejected_under_a_looser_bound_is_measured_again(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(
        cands, [], cands[0], evaluator(status=REJECTED), SearchConfig(), BOUND, progress=lambda _: None
    )
    ev = evaluator()
    # the stored quality (KL 0.001) passes the bound now but has no energy numbers
    outcome = run_search(cands, [], cands[0], ev, SearchConfig(), BOUND, progress=lambda _: None)
    assert len(ev.asked) == 2
    assert all(r.status == MEASURED and not r.reused for r in outcome.results)


def test_max_candidates_cuts_the_search(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(max_candidates=2), BOUND, progress=lambda _: None
    )
    assert len(ev.asked) == 2  # the baseline counts
    assert outcome.not_reached == cands[2:]


def test_stored_candidates_are_used_even_past_the_budget(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    run_search(cands, [], cands[0], evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(budget_minutes=1e-9), BOUND, progress=lambda _: None
    )
    assert ev.asked == [] and outcome.not_reached == []
    assert len(outcome.results) == 3


def test_time_budget_leaves_new_candidates_unmeasured(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(budget_minutes=1e-9), BOUND, progress=lambda _: None
    )
    assert [c for c, _ in ev.asked] == [cands[0]]  # the baseline is always measured
    assert outcome.not_reached == cands[1:]
