"""The search loop when another worker of the search gives candidates up without results (it was
interrupted, and gave its leases up): what this worker then takes over."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import MEASURED, PRUNED
from optimizer.search import runner as runner_module
from optimizer.search.roofline import RooflineRates
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


def held_then_given_up(
    monkeypatch: pytest.MonkeyPatch, evaluator: FakeEvaluator, tmp_path: Path, candidates: list
) -> None:
    """Another worker of the search holds `candidates`; at this worker's first wait for them it
    is stopped and gives its leases up, as an interrupted worker does."""
    other = TrialStore(tmp_path / "trials.db", "ctx", run_id=evaluator.store.run_id)
    for candidate in candidates:
        assert other.claim(candidate.key(), 600)
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(sleep=lambda _s: other.release_all()))


def test_candidates_taken_over_together_each_wait_for_the_budget(
    evaluator: FakeEvaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both given up at once: the second is not started with 5 s of the budget left and a
    measurement taking 10 s, as the main loop would not start it (it measured both: 30 s of 25)."""
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    held_then_given_up(monkeypatch, evaluator, tmp_path, candidates[1:])
    outcome = run_search(
        candidates,
        [],
        candidates[0],
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        SearchConfig(budget_minutes=25 / 60),
        BOUND,
        progress=lambda _: None,
        clock=lambda: evaluator.now,
    )
    assert evaluator.asked == [1, 2]
    assert outcome.measuring_seconds == 20.0
    assert outcome.not_reached == candidates[2:]


def test_the_roofline_never_prunes_a_baseline_another_worker_gave_up(
    evaluator: FakeEvaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The baseline cannot win (its ceiling is below the best) but the ratios need it: once its
    holder gives it up, it is measured here (it was pruned, and left failed as 'not measured')."""

    class Ceiling:  # every candidate's ceiling: its batch size x 10 tokens/J
        rates = RooflineRates(1.0, 1.0, 1.0, 0, source="stand-in")

        def prune_reason(self, candidate, best):
            ceiling = candidate.batch_size * 10.0
            return "roofline: low" if best is not None and ceiling < best.objective else None

    candidates = [make_candidate(batch_size=b) for b in (64, 1, 128)]  # 1: the baseline, 10 < 64
    baseline = candidates[1]
    held_then_given_up(monkeypatch, evaluator, tmp_path, [baseline])
    outcome = run_search(
        candidates,
        [],
        baseline,
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        SearchConfig(),
        BOUND,
        progress=lambda _: None,
        roofline=Ceiling(),  # type: ignore[arg-type]  # a stand-in: prune_reason() and rates
    )
    assert sorted(evaluator.asked) == [1, 64, 128]
    assert outcome.baseline.status == MEASURED
    assert not [r for r in outcome.results if r.status == PRUNED]
