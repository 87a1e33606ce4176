"""search.patience: the feasible results in a row that did not beat the best, for one worker.

A sampler with a fixed order (random, best bound) counts a stored result of an earlier run where
its own order reaches it, as if it had measured it there, and a stored result its order has not
reached yet is no "best" to beat. The count is then the one this order gives, whichever runs
measured what: a rerun of a finished search measures nothing more, and the results of a partial
grid, an Optuna run or a search of another space save measurements but stop nothing early.
Optuna's order depends on what it has seen and never reaches a known candidate: its stored results
count in the order they were committed, by the runs that asked for them (a grid's among them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from optimizer.results import CandidateResult
from optimizer.select import select_best


class Patience:
    def __init__(self, ordered: bool, selectable: Callable[[CandidateResult], bool]) -> None:
        self.ordered = ordered
        self.selectable = selectable
        self.since_best = 0
        self._reached: set[str] = set()  # earlier runs' results that the order has passed

    def rebuild(self, known: Mapping[str, CandidateResult], commit_order: Iterable[str]) -> None:
        """Optuna's count from the stored results, at the first read of the store (an order's
        grows as the order reaches them, in `reach`)."""
        if self.ordered:
            return
        self.since_best, best = 0, None
        for key in commit_order:
            if (result := known.get(key)) is not None and self.selectable(result):
                self.since_best = patience_after(self.since_best, result, best)
                best = select_best([result] if best is None else [best, result])

    def best(self, known: Mapping[str, CandidateResult]) -> CandidateResult | None:
        """The best that a result measured now has to beat."""
        return select_best(
            [
                r
                for k, r in known.items()
                if self.selectable(r) and (not self.ordered or not r.reused or k in self._reached)
            ]
        )

    def reach(self, key: str, known: Mapping[str, CandidateResult]) -> None:
        """The order reached a candidate it knows: an earlier run's result counts here, once."""
        result = known.get(key)
        if not self.ordered or result is None or not result.reused or key in self._reached:
            return
        self.count(result, self.best(known))
        self._reached.add(key)

    def count(self, result: CandidateResult, best: CandidateResult | None) -> None:
        if self.selectable(result):
            self.since_best = patience_after(self.since_best, result, best)


def patience_after(since: int, result: CandidateResult, best: CandidateResult | None) -> int:
    """Feasible candidates in a row without beating the best, once `result` is known (`best` the
    best before it): a new best resets the count, a feasible loser adds one, and an infeasible
    result neither: best-bound order puts the large batches first, and one that misses the SLO or
    the quality bound says nothing about the candidates after it. Nothing feasible, no stop."""
    if not result.feasible:
        return since
    return 0 if best is None or result.objective > best.objective else since + 1
