"""search.patience on a store that earlier runs filled: the count a search starts from is the one
its own order gives, whatever order (grid, random, Optuna, another space) the results came in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.search import runner as runner_module
from optimizer.search.runner import run_search
from optimizer.search.samplers import make_sampler
from optimizer.store import TrialStore
from unit.search.test_runner import FakeEvaluator

BOUND = QualityConfig()
BATCHES = (1, 64, 2, 4, 8, 16, 32, 48)  # the space's (the grid's) order; the fake's goodput is the batch


def quiet(_: str) -> None:
    return None


@pytest.fixture
def evaluator(make_result, make_quality, make_performance):
    def make(store_path: Path) -> FakeEvaluator:
        return FakeEvaluator(TrialStore(store_path, "ctx"), make_result, make_quality, make_performance)

    return make


@pytest.fixture(autouse=True)
def small_batches_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real samplers, with a bound that puts small batches first: best-bound order then differs
    from the grid's, and every candidate it reaches beats the one before."""
    monkeypatch.setattr(
        runner_module,
        "make_sampler",
        lambda cfg, candidates, bound=None, prior=None: make_sampler(
            cfg, candidates, bound, lambda c: 1.0 / c.batch_size
        ),
    )


def batches(ev: FakeEvaluator) -> list[int]:
    return [c.batch_size for c, _ in ev.asked]


def fresh_run(evaluator, tmp_path: Path, candidates, search: SearchConfig) -> list[int]:
    ev = evaluator(tmp_path / "fresh.db")
    run_search(candidates, [], candidates[0], ev, search, BOUND, progress=quiet)
    return batches(ev)


@pytest.mark.parametrize(
    "earlier",
    [
        SearchConfig(sampler="grid", max_candidates=4),  # cut by the budget: 1, 64, 2, 4
        SearchConfig(sampler="random", seed=3, max_candidates=5),
        SearchConfig(sampler="optuna", max_candidates=5),
    ],
    ids=["grid", "random", "optuna"],
)
def test_a_search_after_a_run_of_another_kind_measures_what_its_own_order_reaches(
    evaluator, make_candidate, tmp_path: Path, earlier: SearchConfig
) -> None:
    candidates = [make_candidate(batch_size=b) for b in BATCHES]
    search = SearchConfig(sampler="bound", patience=2)
    alone = fresh_run(evaluator, tmp_path, candidates, search)
    assert alone == [1, 2, 4, 8, 16, 32, 48, 64]  # every one beats the one before: never stopped

    first = evaluator(tmp_path / "trials.db")
    run_search(candidates, [], candidates[0], first, earlier, BOUND, progress=quiet)
    stored = batches(first)
    again = evaluator(tmp_path / "trials.db")
    outcome = run_search(candidates, [], candidates[0], again, search, BOUND, progress=quiet)
    # the earlier run's results save their measurements, and change nothing else
    assert batches(again) == [b for b in alone if b not in stored]
    assert outcome.not_reached == []


def test_a_search_in_another_space_does_not_count_results_its_order_has_not_reached(
    evaluator, make_candidate, tmp_path: Path
) -> None:
    """An earlier grid over a smaller space (the large batches, largest first, so each loses): this
    search's order reaches those results after the small batches it measures first."""
    candidates = [make_candidate(batch_size=b) for b in BATCHES]
    large = [c for c in candidates if 16 <= c.batch_size <= 48][::-1]  # 48 first, then 32, 16 lose
    first = evaluator(tmp_path / "trials.db")
    run_search(large, [], candidates[0], first, SearchConfig(sampler="grid"), BOUND, progress=quiet)
    assert batches(first) == [1, 48, 32, 16]  # the baseline first, whatever the space
    again = evaluator(tmp_path / "trials.db")
    run_search(
        candidates, [], candidates[0], again, SearchConfig(sampler="bound", patience=2), BOUND, progress=quiet
    )
    assert batches(again) == [2, 4, 8, 64]


def test_a_rerun_of_a_finished_search_measures_nothing(evaluator, make_candidate, tmp_path: Path) -> None:
    candidates = [make_candidate(batch_size=b) for b in (8, 1, 2, 4, 5, 6)]  # 8 then 1, 2, 4 lose
    search = SearchConfig(sampler="bound", patience=3)
    first = evaluator(tmp_path / "trials.db")
    run_search(candidates, [], candidates[0], first, search, BOUND, progress=quiet)
    assert batches(first) == [8, 1, 2, 4]
    again = evaluator(tmp_path / "trials.db")
    outcome = run_search(candidates, [], candidates[0], again, search, BOUND, progress=quiet)
    assert again.asked == [] and [c.batch_size for c in outcome.not_reached] == [5, 6]
    longer = evaluator(tmp_path / "trials.db")  # one more loser allowed: one more measured
    run_search(candidates, [], candidates[0], longer, replace(search, patience=4), BOUND, progress=quiet)
    assert batches(longer) == [5]


def test_nothing_feasible_stored_never_stops_a_search(
    evaluator, make_candidate, make_performance, tmp_path: Path
) -> None:
    candidates = [make_candidate(batch_size=b) for b in BATCHES]

    def missing_the_slo(ev: FakeEvaluator) -> FakeEvaluator:
        measure = ev.evaluate

        def late(candidate, role="candidate", stop_below=None):
            slow = make_performance(goodput_tokens_per_joule=candidate.batch_size, slo_violations=["TPOT"])
            return replace(measure(candidate, role, stop_below), performance=slow)

        ev.evaluate = late
        return ev

    first = missing_the_slo(evaluator(tmp_path / "trials.db"))
    grid = SearchConfig(sampler="grid", max_candidates=4)
    run_search(candidates, [], candidates[0], first, grid, BOUND, progress=quiet)
    again = missing_the_slo(evaluator(tmp_path / "trials.db"))
    search = SearchConfig(sampler="bound", patience=1)
    outcome = run_search(candidates, [], candidates[0], again, search, BOUND, progress=quiet)
    assert batches(again) == [8, 16, 32, 48] and outcome.not_reached == []
