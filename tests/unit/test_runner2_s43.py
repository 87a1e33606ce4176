"""Search stopping rules the user sees: search.patience under a grid says that it stops nothing,
and a baseline another worker gives up once the budget is spent is still measured."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import MEASURED
from optimizer.search import runner as runner_module
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

BOUND = QualityConfig()


class FakeEvaluator:
    """Takes 10 s per candidate on a simulated clock; goodput tokens/J is the batch size."""

    def __init__(self, store: TrialStore, make_result, make_quality, make_performance) -> None:
        self.store = store
        self.asked: list[int] = []
        self.now = 0.0
        self._make = lambda candidate, role: make_result(
            candidate=candidate,
            role=role,
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=candidate.batch_size),
            seconds=10.0,
        )

    def evaluate(self, candidate, role="candidate", stop_below=None):
        self.asked.append(candidate.batch_size)
        self.now += 10.0
        return self._make(candidate, role)


@pytest.fixture
def evaluator(tmp_path: Path, make_result, make_quality, make_performance) -> FakeEvaluator:
    store = TrialStore(tmp_path / "trials.db", "ctx")
    return FakeEvaluator(store, make_result, make_quality, make_performance)


def search_lines(evaluator: FakeEvaluator, candidates: list, search: SearchConfig) -> list[str]:
    lines: list[str] = []
    run_search(
        candidates,
        [],
        candidates[0],
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        search,
        BOUND,
        progress=lines.append,
        clock=lambda: evaluator.now,
    )
    return [line for line in lines if "search.patience" in line]


@pytest.mark.parametrize(
    ("sampler", "why"),
    [("grid", "search.sampler=grid measures every candidate"), ("auto", "24 candidates or fewer (here 3)")],
)
def test_patience_under_a_grid_says_once_that_it_stops_nothing(
    evaluator: FakeEvaluator, make_candidate, sampler: str, why: str
) -> None:
    """Losers in a row past patience=1 (4, then 2 and 1): a grid measures them all, and says why
    patience did not stop it and how to get it."""
    candidates = [make_candidate(batch_size=b) for b in (4, 2, 1)]
    lines = search_lines(evaluator, candidates, SearchConfig(sampler=sampler, patience=1))
    assert evaluator.asked == [4, 2, 1]
    assert len(lines) == 1
    assert "search.patience=1 stops nothing" in lines[0] and why in lines[0]
    assert "search.sampler=bound" in lines[0]


@pytest.mark.parametrize(("sampler", "patience"), [("grid", None), ("auto", None), ("random", 1)])
def test_no_patience_note_without_patience_or_under_another_sampler(
    evaluator: FakeEvaluator, make_candidate, sampler: str, patience: int | None
) -> None:
    candidates = [make_candidate(batch_size=b) for b in (4, 2, 1)]
    lines = search_lines(evaluator, candidates, SearchConfig(sampler=sampler, patience=patience))
    assert not [line for line in lines if "stops nothing" in line]  # random: only its stop, if any


def test_a_baseline_given_up_after_the_budget_is_still_measured(
    evaluator: FakeEvaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another worker holds the baseline and gives it up once this worker has spent the budget
    (25 s, two candidates of 10 s): the ratios need it, so it is taken over all the same (it was
    left failed as 'not measured')."""
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    baseline = candidates[0]
    other = TrialStore(tmp_path / "trials.db", "ctx", run_id=evaluator.store.run_id)
    assert other.claim(baseline.key(), 600)
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(sleep=lambda _s: other.release_all()))
    outcome = run_search(
        candidates,
        [],
        baseline,
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        SearchConfig(budget_minutes=25 / 60),
        BOUND,
        progress=lambda _: None,
        clock=lambda: evaluator.now,
    )
    assert evaluator.asked == [2, 4, 1]  # 8 stays cut by the budget
    assert outcome.baseline.status == MEASURED
    assert outcome.not_reached == candidates[3:]
