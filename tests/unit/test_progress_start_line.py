"""Progress lines: one as a candidate's measurement starts (minutes of silence otherwise), the time
left worded as the estimate it is, and the finalists' line counting only the rounds left."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import MEASURED
from optimizer.search.finalists import remeasure
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

from .factories import candidate_result, performance_result, quality_result, torch_candidate
from .test_finalists import FakeEvaluator, measured


class Evaluator:
    def __init__(self, store: TrialStore, seconds: float = 0.01) -> None:
        self.store = store
        self.seconds = seconds
        self.asked: list[int] = []

    def evaluate(self, candidate, role="candidate", stop_below=None):  # type: ignore[no-untyped-def]
        self.asked.append(candidate.batch_size)
        return candidate_result(
            candidate=candidate,
            status=MEASURED,
            role=role,
            quality=quality_result(mean_kl=0.001),
            performance=performance_result(goodput_tokens_per_joule=candidate.batch_size),
            seconds=self.seconds,
        )


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The INFO lines of the search's loggers (a handler of its own: cli.main, run by other tests,
    stops the `optimizer` logger from propagating to pytest's)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("optimizer.search.runner", "optimizer.search.finalists")]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield lines
    for logger, level in zip(loggers, saved, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_line_says_which_candidate_is_being_measured_but_not_for_stored_ones(
    tmp_path: Path, logged: list[str]
) -> None:
    cands = [torch_candidate(batch_size=b) for b in (1, 2, 4)]
    first = Evaluator(TrialStore(tmp_path / "t.db", "ctx"))
    run_search(cands, [], cands[0], first, SearchConfig(), QualityConfig(), progress=lambda _: None)
    starts = [line for line in logged if " measuring " in line]
    assert starts == [
        f"[1/3] measuring {cands[0].label()} (baseline) ...",
        f"[2/3] measuring {cands[1].label()} ...",
        f"[3/3] measuring {cands[2].label()} ...",
    ]
    logged.clear()
    again = Evaluator(TrialStore(tmp_path / "t.db", "ctx"))
    run_search(cands, [], cands[0], again, SearchConfig(), QualityConfig(), progress=lambda _: None)
    assert again.asked == [] and not [line for line in logged if " measuring " in line]


def test_the_time_left_is_called_an_estimate_not_a_bound(tmp_path: Path) -> None:
    cands = [torch_candidate(batch_size=b) for b in (1, 2, 4, 8, 16)]
    evaluator = Evaluator(TrialStore(tmp_path / "t.db", "ctx"), seconds=60.0)
    lines: list[str] = []
    run_search(cands, [], cands[0], evaluator, SearchConfig(), QualityConfig(), progress=lines.append)
    # a median: the next candidate may well take longer than the ~4 min said
    assert lines[0].endswith("(60 s); search: ~4 min left (estimate)")
    assert not any("up to" in line for line in lines)


def test_a_fully_stored_finalists_rerun_says_it_reuses_them(tmp_path: Path, logged: list[str]) -> None:
    pool = [replace(measured(b, [float(b)]), seconds=60.0) for b in (4, 16, 8)]
    search = SearchConfig(finalists=3, finalist_rounds=2)
    remeasure(FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx")), pool, search)  # type: ignore[arg-type]
    assert "in 2 interleaved rounds (~6 min, as long as the search took them)" in logged[0]
    logged.clear()
    again = FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx"))
    remeasure(again, pool, search)  # type: ignore[arg-type]
    assert again.order == []
    assert logged[0].endswith(": all 2 rounds are stored, reused (nothing to measure)")
    assert "re-measuring" not in logged[0]


def test_a_resumed_finalists_run_estimates_only_the_rounds_left(tmp_path: Path, logged: list[str]) -> None:
    pool = [replace(measured(b, [float(b)]), seconds=60.0) for b in (4, 16, 8)]
    search = SearchConfig(finalists=3, finalist_rounds=2)
    stopped = FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx"), interrupt_after=4)
    with pytest.raises(KeyboardInterrupt):
        remeasure(stopped, pool, search)  # type: ignore[arg-type]
    logged.clear()
    resumed = FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx"))
    remeasure(resumed, pool, search)  # type: ignore[arg-type]
    assert resumed.order == [8, 16]
    assert "(4 stored measurements reused, ~2 min for the 2 left, as long as" in logged[0]
