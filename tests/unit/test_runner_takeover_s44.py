"""Candidates another worker of the search held and gave up (an interrupted or dead worker): a
takeover is pruned by the roofline like a fresh candidate, and the candidate cap, decided while
other workers' evaluations were under way, does not keep this worker from taking one over."""

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
    """Goodput tokens/J is the batch size."""

    def __init__(self, store: TrialStore, make_result, make_quality, make_performance) -> None:
        self.store = store
        self.asked: list[int] = []
        self._make = lambda candidate, role: make_result(
            candidate=candidate,
            role=role,
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=candidate.batch_size),
            seconds=10.0,
        )

    def evaluate(self, candidate, role="candidate", stop_below=None):
        self.asked.append(candidate.batch_size)
        return self._make(candidate, role)


class Ceiling:
    """Every candidate's roofline ceiling: its batch size x 10 tokens/J."""

    rates = RooflineRates(1.0, 1.0, 1.0, 0, source="stand-in")

    def prune_reason(self, candidate, best):
        ceiling = candidate.batch_size * 10.0
        return "roofline: low" if best is not None and ceiling < best.objective else None


@pytest.fixture
def evaluator(tmp_path: Path, make_result, make_quality, make_performance) -> FakeEvaluator:
    store = TrialStore(tmp_path / "trials.db", "ctx")
    return FakeEvaluator(store, make_result, make_quality, make_performance)


def held_then_given_up(
    monkeypatch: pytest.MonkeyPatch, evaluator: FakeEvaluator, tmp_path: Path, candidates: list
) -> None:
    """Another worker of the search holds `candidates`; at this worker's first wait for them it
    gives its leases up, as an interrupted worker does (a dead one's lapse)."""
    other = TrialStore(tmp_path / "trials.db", "ctx", run_id=evaluator.store.run_id)
    for candidate in candidates:
        assert other.claim(candidate.key(), 600)
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(sleep=lambda _s: other.release_all()))


def test_a_taken_over_candidate_that_cannot_beat_the_best_is_pruned(
    evaluator: FakeEvaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Batch 2 (ceiling 20) is held elsewhere while the best is batch 1; once batch 64 is measured
    it cannot win, so when its holder gives it up it is pruned, not built (it was measured)."""
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 64)]
    held_then_given_up(monkeypatch, evaluator, tmp_path, [candidates[1]])
    outcome = run_search(
        candidates,
        [],
        candidates[0],
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        SearchConfig(),
        BOUND,
        progress=lambda _: None,
        roofline=Ceiling(),  # type: ignore[arg-type]  # a stand-in: prune_reason() and rates
    )
    assert evaluator.asked == [1, 64]
    assert {r.candidate.batch_size: r.status for r in outcome.results} == {
        1: MEASURED,
        2: PRUNED,
        64: MEASURED,
    }
    assert outcome.workers is not None and outcome.workers[0].pruned_by_roofline == 1
    assert evaluator.store.claims_held() == 0


def test_a_capped_worker_takes_over_a_candidate_whose_slot_it_counted(
    evaluator: FakeEvaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cap 2: the baseline here and batch 2 under way elsewhere fill it, so batch 4 is not started.
    The other worker then gives batch 2 up without a result: its slot is free again, and batch 2
    is taken over (it was left unmeasured, one slot of the cap unused); the cap still holds."""
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    held_then_given_up(monkeypatch, evaluator, tmp_path, [candidates[1]])
    outcome = run_search(
        candidates,
        [],
        candidates[0],
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
        SearchConfig(max_candidates=2),
        BOUND,
        progress=lambda _: None,
    )
    assert evaluator.asked == [1, 2]
    assert evaluator.store.run_count() == 2
    assert outcome.not_reached == candidates[2:]
    assert evaluator.store.claims_held() == 0
