"""Noise-aware selection: the search's best few, re-measured side by side, then chosen with an interval.

The search keeps the maximum of noisy means, so the figure it keeps for its winner is biased upward
(the winner's curse; CPU windows vary by ~14% here) and a winner can sit at the SLO's edge. The top
`search.finalists` feasible candidates are measured again in `search.finalist_rounds` interleaved
rounds (A B C, C B A, ...), and with them any near miss (a latency percentile at most
`search.near_miss` over its target, with more tokens/J; with nothing feasible, the near misses
alone): the SLO's edge is as noisy on the other side. Selection uses only the re-measured
figures: the mean goodput tokens/J and a 95% interval of it per finalist. When the winner's
interval overlaps the runner-up's, they are not distinguishable on energy; then, among the
finalists whose mean lies inside the winner's interval, the one with the most latency headroom is
chosen (a stream near an engine's capacity queues far past the percentile one run measured), and a
winner within `search.slo_margin` of the SLO is flagged in the reason. Each round's results are
kept in the store, so a resumed run measures only the rounds it lacks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

from optimizer.config import SearchConfig, SloConfig
from optimizer.interrupts import deferred_interrupts, raise_if_interrupted
from optimizer.measure.workload import PerformanceResult
from optimizer.results import FAILED, CandidateResult
from optimizer.search.evaluate import Evaluator
from optimizer.search.progress import rough_duration
from optimizer.search.runner import DEATHS_BEFORE_FAILING, died_measuring
from optimizer.search.watchdog import leases_in
from optimizer.select import Selection, feasible, near_misses, potential, select_finalist
from optimizer.space import Candidate
from optimizer.store import TrialStore, context_key, leases_kept

log = logging.getLogger(__name__)


def remeasure(
    evaluator: Evaluator, results: Sequence[CandidateResult], search: SearchConfig
) -> tuple[list[CandidateResult], Selection] | None:
    """Re-measure the best candidates side by side and select among them. Returns every
    re-measurement (a failed finalist's once: it is not measured again) and the selection, or
    None when nothing is in question: with search.finalists < 2, without finalists, or with one
    feasible finalist and nothing beside it (a lone near miss is re-measured: whether it meets
    the SLO is the question)."""
    pool = finalist_pool(results, search, evaluator.workload_cfg.slo)
    if search.finalists < 2 or not pool or (len(pool) == 1 and pool[0].feasible):
        return None
    rounds = [_round_store(evaluator.store, pool, index) for index in range(search.finalist_rounds)]
    _say_plan(pool, rounds, search)
    runs: dict[str, list[CandidateResult]] = {r.candidate.key(): [] for r in pool}
    # what was measured (or stored) per candidate: a failure carried into later rounds for the
    # selection is one measurement, one row in results.jsonl, not one per round
    measurements: dict[str, list[CandidateResult]] = {key: [] for key in runs}
    for index, store in enumerate(rounds):
        if store is not None:
            store.refresh()  # rows another run of this search wrote since the plan was read
        with leases_kept(store, search.lease_seconds) if store else contextlib.nullcontext():
            for previous in pool if index % 2 == 0 else reversed(pool):
                raise_if_interrupted()  # an interrupt swallowed in the last measurement stops here
                earlier = runs[previous.candidate.key()]
                if earlier and earlier[-1].status == FAILED:
                    # it can no longer be selected (that takes every round), and a candidate that
                    # kills its process would cost every later round two more deaths
                    earlier.append(earlier[-1])
                    log.info(
                        "finalist round %d: %s not measured again: it failed",
                        index + 1,
                        previous.candidate.label(),
                    )
                    continue
                result, stored = _measured_round(evaluator, store, previous.candidate, search)
                earlier.append(result)
                measurements[previous.candidate.key()].append(result)
                log.info(
                    "finalist round %d: %s %.3f goodput tok/J%s",
                    index + 1,
                    result.candidate.label(),
                    result.objective,
                    " (stored)" if stored else "",
                )
    remeasured = [r for rs in measurements.values() for r in rs]
    return remeasured, select_finalist(pool, runs, evaluator.workload_cfg.slo, search.slo_margin)


def finalist_pool(
    results: Sequence[CandidateResult], search: SearchConfig, slo: SloConfig
) -> list[CandidateResult]:
    """The best `search.finalists` feasible candidates, best first, where near misses with more
    tokens/J (`near_misses`) take all places but one: the best feasible candidate always
    stays, so a run whose near misses all miss again still selects what it found feasible. With
    nothing feasible, the near misses take every place: a run that would otherwise end with no
    recipe selects one that meets the SLO in every re-measurement."""
    ranked = sorted(feasible(results), key=lambda r: r.objective, reverse=True)
    near = sorted(near_misses(results, slo, search.near_miss), key=potential, reverse=True)
    if not ranked:
        return near[: search.finalists]
    near = near[: max(search.finalists - 1, 0)]
    return [*near, *ranked[: search.finalists - len(near)]]


def _round_store(store: TrialStore | None, pool: Sequence[CandidateResult], index: int) -> TrialStore | None:
    """Round `index` of this pool's re-measurements, kept in the store under a context of its own:
    a run stopped or killed among its finalists resumes them where it stopped, and a finalist that
    kills its process is failed as a search's candidate is, instead of ending every resumed run."""
    if store is None:
        return None
    keys = [r.candidate.key() for r in pool]
    context = context_key({"results": store.context, "finalists": keys, "round": index})
    return TrialStore(store.url, context, run_id=store.run_id, worker=store.worker)


def _say_plan(
    pool: Sequence[CandidateResult], rounds: Sequence[TrialStore | None], search: SearchConfig
) -> None:
    """Log what the finalists' rounds will do: the time of those left to measure, each as long as
    the search took it; rounds an earlier run stored are reused and take none."""
    names = ", ".join(r.candidate.label() + ("" if r.feasible else " (near miss)") for r in pool)
    left = [r.seconds for s in rounds for r in pool if s is None or _stored(s, r.candidate, search) is None]
    stored = len(rounds) * len(pool) - len(left)
    if not left:
        log.info("finalists: %s: all %d rounds are stored, reused (nothing to measure)", names, len(rounds))
        return
    log.info(
        "finalists: re-measuring %s in %d interleaved rounds (%s, as long as the search took them)",
        names,
        len(rounds),
        f"{stored} stored measurements reused, {rough_duration(sum(left))} for the {len(left)} left"
        if stored
        else rough_duration(sum(left)),
    )


def _stored(rounds: TrialStore, candidate: Candidate, search: SearchConfig) -> CandidateResult | None:
    """The candidate's result in this round as an earlier run stored it, unless it is measured
    again (a failure is, once per run, with search.retry_failed)."""
    stored = rounds.get(candidate)
    retry = stored is not None and stored.status == FAILED and search.retry_failed
    return None if retry and not rounds.measured_in_run(candidate) else stored


def _measured_round(
    evaluator: Evaluator, rounds: TrialStore | None, candidate: Candidate, search: SearchConfig
) -> tuple[CandidateResult, bool]:
    """The candidate's result in this round, and whether it was stored by an earlier run."""
    if rounds is None:
        return evaluator.evaluate(candidate, "finalist"), False
    if (stored := _stored(rounds, candidate, search)) is not None:
        # an earlier run's: its time is not this run's (the report's evaluation seconds)
        return replace(stored, reused=not rounds.measured_in_run(candidate)), True
    # a lease taken from a process that died measuring this round is counted, as in the search;
    # one held by a live run (the same search, started twice) is not waited for
    rounds.claim(candidate.key(), search.lease_seconds, candidate.label())
    deaths = rounds.deaths_measuring(candidate)
    # an interrupt once the result exists (the evaluator's tail, the append) waits for its row,
    # then ends the run, as in the search; the measurement itself stays interruptible
    with leases_in(rounds), deferred_interrupts():  # a hang is recorded in the round, as a failure is
        result = (
            died_measuring(candidate, deaths, "finalist")
            if deaths >= DEATHS_BEFORE_FAILING
            else evaluator.evaluate(candidate, "finalist")
        )
        rounds.append(result)  # also gives up the lease
    return result, False


def merged(runs: Sequence[CandidateResult]) -> CandidateResult:
    """A finalist's re-measurements as one result: the energy of every window (the figures its
    selection used, not only the last round's), the last run's latency and stream summary, and
    every SLO violation any round saw."""
    measured = [(r, r.performance) for r in runs if r.performance is not None]
    if len(measured) < 2:
        return runs[-1]
    last, last_performance = measured[-1]
    performance = PerformanceResult.of_windows(
        [w for _, p in measured for w in p.windows],
        idle_watts=last_performance.idle_watts,
        latency=last_performance.latency,
        slo_violations=sorted({v for _, p in measured for v in p.slo_violations}),
        serving=last_performance.serving,
    )
    return replace(last, performance=performance, seconds=sum(r.seconds for r, _ in measured))
