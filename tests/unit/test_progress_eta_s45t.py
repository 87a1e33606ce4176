"""The progress line's time left when the budget cannot fit another candidate (s45): with 20 s of
budget left and candidates that take 100 s, no further candidate starts (the runner starts none
with less than a typical measurement's time left), yet the line said `~20 s left`. Now it says
that no further candidate fits the budget."""

from __future__ import annotations

from pathlib import Path

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import MEASURED
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

from .factories import candidate_result, performance_result, quality_result, torch_candidate


class TimedEvaluator:
    """Every evaluation takes `seconds` on the fake clock."""

    def __init__(self, store: TrialStore, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def evaluate(self, candidate, role="candidate", stop_below=None):  # type: ignore[no-untyped-def]
        self.now += self.seconds
        return candidate_result(
            candidate=candidate,
            status=MEASURED,
            role=role,
            quality=quality_result(mean_kl=0.001),
            performance=performance_result(goodput_tokens_per_joule=candidate.batch_size),
            seconds=self.seconds,
        )


def _lines(tmp_path: Path, budget_seconds: float) -> list[str]:
    cands = [torch_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    evaluator = TimedEvaluator(TrialStore(tmp_path / "t.db", "ctx"), seconds=100.0)
    lines: list[str] = []
    search = SearchConfig(budget_minutes=budget_seconds / 60)
    run_search(
        cands, [], cands[0], evaluator, search, QualityConfig(), progress=lines.append, clock=evaluator.clock
    )
    return lines


def test_no_time_is_promised_when_no_further_candidate_fits_the_budget(tmp_path: Path) -> None:
    [line] = _lines(tmp_path, budget_seconds=120.0)  # 20 s left after the first: nothing starts
    assert line.endswith("(100 s); search: no further candidate fits the ~20 s of budget left")
    assert "s left (estimate)" not in line


def test_the_estimate_stays_while_the_next_candidate_fits(tmp_path: Path) -> None:
    lines = _lines(tmp_path, budget_seconds=240.0)  # 140 s left after the first: one more starts
    assert lines[0].endswith("(100 s); search: ~2 min left (estimate)")
    assert lines[1].endswith("(100 s); search: no further candidate fits the ~40 s of budget left")
    assert len(lines) == 2
