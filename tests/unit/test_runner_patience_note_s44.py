"""The note that search.patience stops nothing under a grid is said once per search: by worker 0
(workers.py passes first_worker=spec.index == 0), not by each of the search's workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.search.runner import search_worker
from optimizer.store import TrialStore

BOUND = QualityConfig()


class FakeEvaluator:
    def __init__(self, store: TrialStore, make_result, make_quality, make_performance) -> None:
        self.store = store
        self._make = lambda candidate, role: make_result(
            candidate=candidate,
            role=role,
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=candidate.batch_size),
            seconds=10.0,
        )

    def evaluate(self, candidate, role="candidate", stop_below=None):
        return self._make(candidate, role)


@pytest.mark.parametrize("sampler", ["grid", "auto"])
def test_two_workers_say_the_patience_note_once(
    tmp_path: Path, make_candidate, make_result, make_quality, make_performance, sampler: str
) -> None:
    candidates = [make_candidate(batch_size=b) for b in (4, 2, 1)]
    search = SearchConfig(sampler=sampler, patience=1, workers=2)
    lines: list[str] = []
    for index in range(2):  # one after the other: the second finds the first's results
        store = TrialStore(tmp_path / "trials.db", "ctx", run_id="one-run")
        evaluator = FakeEvaluator(store, make_result, make_quality, make_performance)
        search_worker(
            candidates,
            candidates[0],
            evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate() and store
            search,
            BOUND,
            lines.append,
            first_worker=index == 0,
        )
    assert len([line for line in lines if "search.patience=1 stops nothing" in line]) == 1


def test_a_lone_worker_says_it_by_default(
    tmp_path: Path, make_candidate, make_result, make_quality, make_performance
) -> None:
    candidates = [make_candidate(batch_size=b) for b in (4, 2, 1)]
    evaluator = FakeEvaluator(
        TrialStore(tmp_path / "trials.db", "ctx"), make_result, make_quality, make_performance
    )
    lines: list[str] = []
    search_worker(
        candidates,
        candidates[0],
        evaluator,
        SearchConfig(patience=1),
        BOUND,
        lines.append,  # type: ignore[arg-type]
    )
    assert len([line for line in lines if "stops nothing" in line]) == 1
