"""Selection: the feasible set, the best candidate in it, and the energy-quality Pareto front."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from optimizer.config import SloConfig
from optimizer.measure.latency import percentile_key
from optimizer.results import FAILED, MEASURED, CandidateResult, sig3


def feasible(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """Inside the quality bound (checked before measuring) and the latency SLO."""
    return [r for r in results if r.feasible]


def select_best(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The feasible candidate with the most goodput tokens per joule (ties: higher throughput)."""
    pool = feasible(results)
    if not pool:
        return None
    return max(
        pool, key=lambda r: (r.objective, r.performance.tokens_per_second.mean if r.performance else 0.0)
    )


def with_selected(
    results: Sequence[CandidateResult], selected: CandidateResult | None
) -> list[CandidateResult]:
    """`results` with the selected candidate's search row replaced by its re-measurement where that
    row missed the SLO (a near miss that won as a finalist): the search's figures would otherwise
    call the selected candidate infeasible in the per-backend table and leave it off the front."""
    if selected is None or not selected.feasible:
        return list(results)
    key = selected.candidate.key()
    return [selected if r.candidate.key() == key and not r.feasible else r for r in results]


def as_selected(
    results: Sequence[CandidateResult], selected: CandidateResult | None
) -> list[CandidateResult]:
    """`results` with the selected candidate's search row replaced by the figures it was selected
    on (its finalist re-measurement), met the SLO in the search or not: the report's Pareto front
    then lists the figure the plot's star marks (unlike `with_selected`'s tables, which keep what
    the search measured wherever it is feasible)."""
    if selected is None or not selected.feasible:
        return list(results)
    key = selected.candidate.key()
    return [selected if r.candidate.key() == key else r for r in results]


def pareto_front(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """Measured, SLO-meeting candidates not dominated in (goodput tokens/J up, mean KL down).

    Quality-rejected candidates have no energy numbers and so are not on the front.
    """
    points = [r for r in results if r.status == MEASURED and r.feasible and r.quality is not None]
    front = []
    for r in points:
        assert r.quality is not None
        dominated = any(
            o.objective >= r.objective
            and o.quality is not None
            and o.quality.mean_kl <= r.quality.mean_kl
            and (o.objective > r.objective or o.quality.mean_kl < r.quality.mean_kl)
            for o in points
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.quality.mean_kl if r.quality else 0.0)


# -- noise-aware selection among re-measured finalists (search/finalists.py measures them) ----

# two-sided 95% Student t quantiles by degrees of freedom; beyond the table, t95's series
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def t95(df: int) -> float:
    """Student's t for a two-sided 95% interval: the table to 10 degrees of freedom, then the
    Cornish-Fisher series in 1/df (within 0.001 of the exact value from 11 on)."""
    if df in T95:
        return T95[df]
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Finalist:
    """One finalist's re-measured figures. `headroom`: the least of 1 - p/SLO over the latency
    targets (None without any); `feasible`: every re-measurement met the SLO; `near_miss`: the
    search's run missed the SLO, by at most search.near_miss (see `near_misses`)."""

    label: str
    key: str
    samples: list[float]  # goodput tokens/J per re-measured window
    mean: float
    low: float
    high: float
    headroom: float | None
    feasible: bool
    near_miss: bool = False

    @property
    def shown_low(self) -> float:
        """`low` as printed and recorded: a t interval over few, spread windows reaches below 0
        tok/J, which nothing has. Selection compares `low` itself (-inf: no interval); with every
        mean and high >= 0, clamping it would decide nothing differently."""
        return max(self.low, 0.0)


@dataclass(frozen=True)
class Selection:
    finalists: list[Finalist]  # best first
    winner: str  # candidate key
    distinguishable: bool  # the winner's interval lies above the runner-up's (False without one)
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def feasible(self) -> bool:
        """Whether the winner met the SLO in every re-measurement (else none of them did)."""
        return next(f.feasible for f in self.finalists if f.key == self.winner)

    @property
    def all_failed(self) -> bool:
        """Whether no finalist's re-measurement gave a window (each crashed, ran out of memory...)."""
        return not any(f.samples for f in self.finalists)

    @property
    def only_near_misses(self) -> bool:
        """Whether nothing was feasible in the search, so every finalist is a near miss."""
        return all(f.near_miss for f in self.finalists)


def interval(samples: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95% interval of the mean (Student t); one sample has an unbounded interval."""
    mean = statistics.fmean(samples)
    if len(samples) < 2:
        return mean, -math.inf, math.inf
    half = t95(len(samples) - 1) * statistics.stdev(samples) / math.sqrt(len(samples))
    return mean, mean - half, mean + half


def latency_headroom(result: CandidateResult, slo: SloConfig) -> float | None:
    """1 - (p-th percentile latency / target), the smaller over TTFT and TPOT; None without targets
    or with a target's summary empty (no latency to claim headroom from)."""
    if result.performance is None:
        return None
    latency = result.performance.latency
    key = percentile_key(slo.percentile)
    margins = []
    for target, values in ((slo.tpot_ms, latency.tpot_ms), (slo.ttft_ms, latency.ttft_ms)):
        if not target:
            continue
        # (a summary stored before it kept the SLO's percentile: the next one above)
        ms = values.get(key, _next_above(values, slo.percentile))
        if ms is None:  # an empty summary: the other target's margin alone would claim both
            return None
        margins.append(1 - ms / target)
    return min(margins) if margins else None


def near_misses(
    results: Sequence[CandidateResult], slo: SloConfig, near_miss: float | None
) -> list[CandidateResult]:
    """Measured candidates (so inside the quality bound) whose only fault is a latency percentile
    at most `near_miss` over its target, and whose tokens/J (`potential`) is above every feasible
    one's goodput tokens/J: one run's percentile over a few dozen requests is too noisy to rule
    them out unmeasured again."""
    if near_miss is None:
        return []
    best_feasible = max((r.objective for r in feasible(results)), default=0.0)
    return [
        r
        for r in results
        if r.status == MEASURED
        and not r.feasible
        and potential(r) > best_feasible
        and (headroom := latency_headroom(r, slo)) is not None
        # >= 0: every percentile inside its target, so it missed by requests given up unfinished
        # (TPOT unbounded, TTFT unknown): an overload, not a noisy percentile near its target
        and -near_miss <= headroom < 0
        and not gave_up(r)  # (a percentile near its target as well does not make it less overloaded)
    ]


def gave_up(result: CandidateResult) -> bool:
    """Whether the run missed the SLO by requests given up unfinished (measure/latency.py's
    `unfinished_violation`, measure/load.py's `unknown_ttft_violation`): an overload."""
    violations = result.performance.slo_violations if result.performance else []
    return any("given up unfinished" in v for v in violations)


def potential(result: CandidateResult) -> float:
    """A near miss's worth if it met the SLO: its tokens/J counting every token. Its goodput can be
    nearly 0 however close it came: in a static batch every request shares one TPOT, and 8% over
    the target puts every request of the batch over it."""
    return result.performance.tokens_per_joule.mean if result.performance else 0.0


def _next_above(values: dict[str, float], q: float) -> float | None:
    """The summary's value at the smallest percentile above q (p99 for p95): never optimistic.
    None for an empty summary: its 0 ms read as 100% headroom and won ties on it; None claims no
    headroom (last in a tie, no near miss, no edge flag)."""
    above = sorted((float(k[1:]), v) for k, v in values.items() if float(k[1:]) >= q)
    return above[0][1] if above else max(values.values(), default=None)


# Latency headroom breaks a tie on energy only where it is larger by more than this: percentile
# latencies move by a few points from run to run (the demo of 2026-12-05 chose llama.cpp over the
# slot loop, whose mean was higher, on "58% latency headroom to 58%")
HEADROOM_TIE_MARGIN = 0.05


def select_finalist(
    pool: Sequence[CandidateResult], runs: dict[str, list[CandidateResult]], slo: SloConfig, margin: float
) -> Selection:
    finalists = []
    for first in pool:
        key = first.candidate.key()
        samples = [
            w.goodput_tokens_per_joule for r in runs[key] if r.performance for w in r.performance.windows
        ]
        # no window re-measured (every round failed): nothing bounds it, as with one window
        mean, low, high = interval(samples) if samples else (0.0, -math.inf, math.inf)
        headrooms = [h for r in runs[key] if (h := latency_headroom(r, slo)) is not None]
        finalists.append(
            Finalist(
                label=first.candidate.label(),
                key=key,
                samples=samples,
                mean=mean,
                low=low,
                high=high,
                headroom=min(headrooms) if headrooms else None,
                feasible=bool(samples) and all(r.feasible for r in runs[key]),
                near_miss=not first.feasible,
            )
        )
    ranked = sorted(finalists, key=lambda f: (f.feasible, f.mean), reverse=True)
    winner = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None  # (a lone near miss has none)
    # an infeasible winner means none stayed feasible: no finalist is ahead of another then
    distinguishable = (
        winner.feasible
        and runner_up is not None
        and (runner_up.feasible is False or winner.low > runner_up.high)
    )
    failures = [r.reason for rs in runs.values() for r in rs if r.status == FAILED and r.reason]
    if not any(f.samples for f in finalists):  # no latency was measured to miss the SLO with
        reason = "every finalist failed when re-measured" + (f" (first: {failures[0]})" if failures else "")
        return Selection(finalists=ranked, winner=winner.key, distinguishable=False, reason=reason)
    reason = (
        ("no finalist met the SLO in every re-measurement; the best, " if not winner.feasible else "")
        + f"{winner.label}: {sig3(winner.mean)} goodput tok/J {_bounds(winner)} re-measured"
        + _against_runner_up(winner, runner_up, distinguishable)
    )
    # a tie on energy (a mean inside the winner's interval): the most latency headroom wins, the
    # same energy with more room for load and noise (a stream near an engine's capacity queues far
    # past the percentile one run measured)
    # (an infeasible winner means none is feasible: it stays, alone; so does one re-measured in a
    # single window: with no interval every mean would be "inside" it, half its tokens/J included)
    tied = [winner, *(f for f in ranked[1:] if f.feasible and f.mean >= winner.low > -math.inf)]
    roomiest = max(tied, key=lambda f: f.headroom if f.headroom is not None else -math.inf)
    if roomiest is not winner and (roomiest.headroom or 0.0) > (winner.headroom or 0.0) + HEADROOM_TIE_MARGIN:
        reason = (
            f"{roomiest.label} over {winner.label}: indistinguishable on energy "
            f"({_bounds(roomiest)} vs {_bounds(winner)} goodput tok/J), "
            f"and {roomiest.label} has {percent_down(roomiest.headroom or 0.0)} latency headroom to {winner.label}'s "
            + (percent_down(winner.headroom) if winner.headroom is not None else "none")
        )
        ranked.remove(roomiest)
        ranked.insert(0, roomiest)
        winner = roomiest
    if winner.feasible and winner.near_miss:
        reason += "; it missed the SLO in the search's run and met it in every re-measurement"
    if winner.feasible and (flag := edge_flag(winner.headroom, margin)):  # (an infeasible one is past it)
        reason += f"; {flag}"
    return Selection(finalists=ranked, winner=winner.key, distinguishable=distinguishable, reason=reason)


def _against_runner_up(winner: Finalist, runner_up: Finalist | None, distinguishable: bool) -> str:
    if runner_up is None:
        return ", the only finalist"
    if not runner_up.samples:  # (a crash has no interval to be distinguished from)
        return f"; {runner_up.label} failed when re-measured"
    if winner.feasible and not runner_up.feasible:
        return f"; {runner_up.label} ({sig3(runner_up.mean)}) missed the SLO when re-measured"
    span = f"{runner_up.label}'s {_bounds(runner_up)}"
    return f", above {span}" if distinguishable else f", not distinguishable from {span}"


def _bounds(finalist: Finalist) -> str:
    """Its 95% interval, or why it has none (its figure is then taken as it is)."""
    if len(finalist.samples) < 2:
        return f"(no interval from {len(finalist.samples)} window{'s' if not finalist.samples else ''})"
    return f"[{sig3(finalist.shown_low)}, {sig3(finalist.high)}]"


def edge_flag(headroom: float | None, margin: float) -> str | None:
    """What a selected candidate within `margin` (search.slo_margin) of the SLO is flagged with;
    None: not at its edge, or no latency target to be at the edge of."""
    if headroom is None or headroom >= margin:
        return None
    return f"its latency is within {margin:.0%} of the SLO"


def lone_edge_reason(best: CandidateResult, slo: SloConfig, margin: float) -> str | None:
    """The selection reason of a candidate selected on the search's run alone (the only feasible
    one, or search.finalists < 2: `remeasure` returns no Selection then) at the SLO's edge, flagged
    as a finalist is: with nothing compared, the edge is all there is to say (None otherwise)."""
    flag = edge_flag(latency_headroom(best, slo), margin) if best.feasible else None
    if flag is None:
        return None
    return f"{best.candidate.label()}: {sig3(best.objective)} goodput tok/J in the search's run, not re-measured; {flag}"


def percent_down(fraction: float) -> str:
    """A headroom in whole percent, rounded down: 0.995 rounded read 100% (no latency at all) and a
    near miss 0.4% over its target read -0%. (Rounded to 6 digits first: 0.58 * 100 is
    57.99999999999999.)"""
    return f"{math.floor(round(fraction * 100, 6))}%" if math.isfinite(fraction) else f"{fraction}"
