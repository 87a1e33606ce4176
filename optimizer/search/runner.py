"""The search loop of one worker, and the outcome of a search read back from the store.

A worker measures the baseline first, then the sampler's candidates within the budget. Before each
decision it reads the store: results of earlier runs and of other workers reach its sampler
(`observe`) and are never measured again. It evaluates a candidate only while it holds the lease
on it; one leased by a live worker is left to that worker, a lapsed lease is taken over. Each
finished candidate is committed at once, so a killed search resumes without repeating it.
Candidates whose roofline bound cannot beat the best measured so far are pruned, never built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from optimizer.config import QualityConfig, SearchConfig
from optimizer.interrupts import deferred_interrupts, raise_if_interrupted
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED, CandidateResult
from optimizer.search.evaluate import DEATHS_BEFORE_FAILING, Evaluator, died_measuring
from optimizer.search.patience import Patience
from optimizer.search.progress import measuring_line, progress_line, time_left_note
from optimizer.search.roofline import Roofline
from optimizer.search.samplers import GridSampler, make_sampler, patience_note
from optimizer.search.watchdog import now_iso
from optimizer.select import select_best
from optimizer.space import Candidate
from optimizer.store import TrialStore, leases_kept

log = logging.getLogger(__name__)
BUSY_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class WorkerReport:
    """What one worker did, for the report (results themselves are in the store)."""

    evaluated: int = 0
    pruned_by_roofline: int = 0
    invalid_proposals: int = 0  # Optuna proposals outside the valid set, never measured
    mapped_proposals: int = 0  # Optuna suggestions mapped onto the nearest unevaluated candidate


@dataclass(frozen=True)
class SearchOutcome:
    baseline: CandidateResult
    baseline_in_space: bool  # else it is measured for the ratios only and cannot be selected
    results: list[CandidateResult]  # every candidate evaluated, reused or pruned, baseline included
    not_reached: list[Candidate]  # cut by the time or candidate budget
    measuring_seconds: float  # evaluation seconds of this run, all workers together (reuse is free)
    workers: list[WorkerReport] | None = None
    roofline: str | None = None  # the rates behind roofline pruning, when it was on

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
    roofline: Roofline | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SearchOutcome:
    """Search with this process as the only worker, then read the outcome back from the store."""
    store = evaluator.store
    assert store is not None, "a search records every result in a TrialStore"
    report = search_worker(
        candidates,
        baseline,
        evaluator,
        search,
        bound,
        progress,
        roofline,
        clock() + search.budget_minutes * 60,
        clock,
    )
    return collect_outcome(candidates, pruned, baseline, store, bound, roofline, [report])


def search_worker(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    evaluator: Evaluator,
    search: SearchConfig,
    bound: QualityConfig,
    progress: Callable[[str], None] = log.info,
    roofline: Roofline | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    *,
    first_worker: bool = True,
) -> WorkerReport:
    """One worker's loop; `deadline` is on `clock` and shared by all workers of the search.
    `first_worker`: worker 0 (or the only one), which says what is said once per search."""
    store = evaluator.store
    assert store is not None, "a search records every result in a TrialStore"
    loop = _WorkerLoop(
        candidates, baseline, evaluator, store, search, bound, progress, roofline, deadline, clock
    )

    stop_said: list[bool] = []
    if first_worker and (note := patience_note(search, loop.sampler, len(candidates))) is not None:
        progress(note)

    def over_budget(capped: bool = True) -> bool:
        # a candidate is not started when the time left is less than a typical measurement:
        # it would most likely run past the budget
        if deadline is not None and deadline - clock() < max(loop.typical_seconds(), 0.0):
            return True
        # a grid measures every candidate: patience applies to an order that puts winners first
        grid = type(loop.sampler) is GridSampler
        since_best = loop.patience.since_best
        if search.patience is not None and not grid and since_best >= search.patience:
            if not stop_said:  # asked again while waiting for other workers' results
                progress(
                    f"stopping: {since_best} feasible candidates in a row did not beat the best (search.patience)"
                )
                stop_said.append(True)
            return True
        return (capped and loop.capped) or (
            search.max_candidates is not None and store.run_count() >= search.max_candidates
        )

    def waited(held: Candidate) -> bool:
        # the baseline whatever the budget and patience: the ratios need it. `capped` counted the
        # held one's evaluation: given up without a result, its slot is free (try_evaluate decides)
        return held == baseline or not over_budget(capped=False)

    with leases_kept(store, search.lease_seconds):
        loop.sync()
        if baseline.key() not in loop.known:
            loop.try_evaluate(baseline)  # always, whatever the budget: the ratios need it
        loop.patience.reach(baseline.key(), loop.known)  # a stored one counts first, as measured
        while not over_budget():
            loop.sync()
            candidate = loop.sampler.suggest()
            if candidate is None:
                break
            if candidate.key() in loop.known:
                loop.patience.reach(candidate.key(), loop.known)
                continue
            if not loop.pruned_by_roofline(candidate):
                loop.try_evaluate(candidate)
        # Candidates other workers hold: wait for their results, take over leases that lapse.
        while any(waited(c) for c in loop.busy):
            loop.sync()
            for candidate in list(loop.busy):
                if waited(candidate):  # a takeover starts a measurement: budget and patience decide each
                    loop.try_evaluate(candidate)
            if any(waited(c) for c in loop.busy):
                time.sleep(BUSY_POLL_SECONDS)
    sampler = loop.sampler
    return WorkerReport(
        evaluated=loop.evaluated,
        pruned_by_roofline=loop.roofline_pruned,
        invalid_proposals=int(getattr(sampler, "invalid_proposals", 0)),
        mapped_proposals=int(getattr(sampler, "mapped_proposals", 0)),
    )


class _WorkerLoop:
    """The state one worker keeps between decisions: what it knows, holds off, and has spent."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        baseline: Candidate,
        evaluator: Evaluator,
        store: TrialStore,
        search: SearchConfig,
        bound: QualityConfig,
        progress: Callable[[str], None],
        roofline: Roofline | None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.baseline = baseline
        self.baseline_in_space = baseline in candidates
        self.evaluator = evaluator
        self.store = store
        self.search = search
        self.bound = bound
        self.progress = progress
        self.roofline = roofline
        self.space = {c.key(): c for c in [baseline, *candidates]}
        prior = (lambda c: roofline.bound(c).tokens_per_joule) if roofline is not None else None
        self.sampler = make_sampler(search, list(candidates), bound, prior)
        self.known: dict[str, CandidateResult] = {}
        self.busy: list[Candidate] = []  # held by another worker
        self.mine: set[str] = set()
        self.evaluated = 0
        self.roofline_pruned = 0
        self.patience = Patience(isinstance(self.sampler, GridSampler), self.selectable)
        # the candidate cap is reached, counting other workers' evaluations under way: draw no more
        self.capped = False
        self._synced = False  # the first sync reads every candidate, later ones what changed
        self.deadline, self.clock = deadline, clock  # the search's: bound the time-left estimate

    def role(self, candidate: Candidate) -> str:
        return "baseline" if candidate == self.baseline else "candidate"

    def sync(self) -> None:
        """Take in every stored result not seen yet: earlier runs' and other workers'."""
        changed = self.store.refresh()
        first = not self._synced
        keys = self.space.keys() if first else [k for k in changed if k in self.space]
        self._synced = True
        for key in list(keys):
            candidate = self.space[key]
            if key not in self.known and (result := self.reusable(candidate)) is not None:
                self.record(candidate, result)
        if first:  # a rerun goes on from where the stored results leave patience, not afresh
            self.patience.rebuild(self.known, self.store.commit_order())

    def reusable(self, candidate: Candidate) -> CandidateResult | None:
        """A stored result that still holds under this run's bound, or None: must be evaluated."""
        stored = self.store.get(candidate)
        if (
            stored is not None
            and stored.status == FAILED
            and self.search.retry_failed
            and not self.store.measured_in_run(candidate)
        ):
            return None
        return stored_result(self.store, candidate, self.bound, self.role(candidate))

    def record(self, candidate: Candidate, result: CandidateResult) -> None:
        self.known[candidate.key()] = result
        self.busy = [c for c in self.busy if c != candidate]
        if candidate != self.baseline or self.baseline_in_space:
            self.sampler.observe(candidate, result)
        line = progress_line(len(self.known), len(self.space), result, candidate.key() in self.mine)
        budget_left = None if self.deadline is None else max(self.deadline - self.clock(), 0.0)
        self.progress(line + time_left_note(self.seconds_left(), budget_left, self.typical_seconds()))

    def seconds_left(self) -> float | None:
        """An estimate of the time the search still takes: the candidates not yet known at this
        worker's median time each, shared by the workers, within the candidate cap and the budget
        (slower candidates make it longer; patience and the roofline can end it sooner). None
        before this worker has measured one."""
        typical = self.typical_seconds()
        if not typical:
            return None
        left = sum(key not in self.known for key in self.space)
        if self.search.max_candidates is not None:
            left = min(left, max(self.search.max_candidates - self.store.run_count(), 0))
        seconds = -(-left // self.search.workers) * typical
        if self.deadline is not None:
            seconds = min(seconds, max(self.deadline - self.clock(), 0.0))
        return seconds

    def typical_seconds(self) -> float:
        """Median seconds of the candidates this worker measured (0 before the first)."""
        spent = sorted(r.seconds for k, r in self.known.items() if k in self.mine and r.status == MEASURED)
        return spent[len(spent) // 2] if spent else 0.0

    def selectable(self, result: CandidateResult) -> bool:
        return result.role != "baseline" or self.baseline_in_space

    def best(self) -> CandidateResult | None:
        return select_best([r for r in self.known.values() if self.selectable(r)])

    def pruned_by_roofline(self, candidate: Candidate) -> bool:
        # the ratios need the baseline, winner or not (it reaches here when another worker holds it)
        if self.roofline is None or candidate == self.baseline:
            return False
        reason = self.roofline.prune_reason(candidate, self.best())
        if reason is None:
            return False
        self.roofline_pruned += 1
        self.record(candidate, CandidateResult(candidate, PRUNED, reason=reason, finished_at=now_iso()))
        return True

    def try_evaluate(self, candidate: Candidate) -> None:
        """Evaluate under a lease; leave the candidate to the worker that holds it."""
        raise_if_interrupted()  # an interrupt swallowed during the last candidate (a __del__) stops here
        key = candidate.key()
        if not self.store.claim(key, self.search.lease_seconds, candidate.label()):
            if candidate not in self.busy:
                self.busy.append(candidate)
            return
        role = self.role(candidate)
        cap = self.search.max_candidates if role != "baseline" else None  # a baseline is always measured
        # Other workers' evaluations under way, read before the results: one that ends in between
        # is then among the results, never in neither.
        elsewhere = len(self.store.candidates_held_elsewhere()) if cap is not None else 0
        # Another worker may have finished it between our read and our claim. A full sync, not a
        # bare refresh: refresh() advances the store's read position, so the other results it
        # returns would otherwise never reach `known`, the sampler or the roofline.
        self.sync()
        # a takeover was not pruned before its claim, and the sync may have brought a better best
        if key in self.known or self.pruned_by_roofline(candidate):
            self.store.release(key)
            return
        if cap is not None and self.store.run_count() + elsewhere >= cap:
            # The cap would be passed once the others finish. Of two claims at the same moment, the
            # later one always sees the earlier: the cap is never passed, though both may yield.
            self.store.release(key)
            self.capped = True
            return
        if (deaths := self.store.deaths_measuring(candidate)) >= DEATHS_BEFORE_FAILING:
            failed = died_measuring(candidate, deaths, role)
            self.store.append(failed)  # also gives up the lease
            self.mine.add(key)
            self.record(candidate, failed)
            return
        before, to_beat = self.best(), self.patience.best(self.known)
        margin = self.search.screen_margin
        stop_below = (
            before.objective / (1 + margin)
            if before is not None and margin is not None and role != "baseline"
            else None
        )
        # a measurement takes minutes (an engine build longer): say which one is under way
        log.info(measuring_line(len(self.known) + 1, len(self.space), candidate, role))
        # an interrupt once the result exists (the evaluator's tail, the append) waits for its
        # row, then ends the run; the measurement itself stays interruptible (Evaluator.evaluate)
        with deferred_interrupts():
            result = self.evaluator.evaluate(candidate, role, stop_below=stop_below)
            self.store.append(result)  # also gives up the lease
        self.evaluated += 1
        self.mine.add(key)
        self.record(candidate, replace(result, role=role))
        self.patience.count(result, to_beat)


def stored_result(
    store: TrialStore, candidate: Candidate, bound: QualityConfig, role: str
) -> CandidateResult | None:
    """The stored result of a candidate judged under this run's bound (None: none stored, or it
    was rejected under a stricter bound and now needs its energy window), marked as reused unless
    this run measured it. A candidate rejected without its energy window is no baseline: the
    ratios need its energy figures, so it is measured (the evaluator measures a baseline's)."""
    result = store.get(candidate)
    judged = result.rejudged(bound) if result is not None else None
    if judged is None or (role == "baseline" and judged.status == REJECTED and judged.performance is None):
        return None
    return replace(judged, role=role, reused=not store.measured_in_run(candidate))


def collect_outcome(
    candidates: Sequence[Candidate],
    pruned: Sequence[tuple[Candidate, str]],
    baseline: Candidate,
    store: TrialStore,
    bound: QualityConfig,
    roofline: Roofline | None,
    reports: Sequence[WorkerReport],
) -> SearchOutcome:
    """The search's results as the store holds them once its workers are done."""
    store.refresh()
    in_space = baseline in candidates

    def stored(candidate: Candidate, role: str) -> CandidateResult | None:
        return stored_result(store, candidate, bound, role)

    results = [
        CandidateResult(candidate=c, status=PRUNED, reason=why, finished_at=now_iso()) for c, why in pruned
    ]
    base = stored(baseline, "baseline") or CandidateResult(
        baseline, FAILED, reason="not measured: the worker that held it did not finish", role="baseline"
    )
    results.append(base)
    found = {c.key(): r for c in candidates if c != baseline and (r := stored(c, "candidate")) is not None}
    best = select_best(list(found.values()) + ([base] if in_space else []))
    not_reached = []
    for candidate in candidates:
        if candidate == baseline:
            continue
        if candidate.key() in found:
            results.append(found[candidate.key()])
        elif roofline is not None and (why := roofline.prune_reason(candidate, best)):
            results.append(CandidateResult(candidate, PRUNED, reason=why, finished_at=now_iso()))
        else:
            not_reached.append(candidate)
    return SearchOutcome(
        baseline=base,
        baseline_in_space=in_space,
        results=results,
        not_reached=not_reached,
        measuring_seconds=store.run_seconds(),
        workers=list(reports),
        roofline=roofline.rates.describe() if roofline is not None else None,
    )
