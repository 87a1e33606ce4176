"""The search's progress lines: one per candidate as its result becomes known, and one as its
measurement starts."""

from __future__ import annotations

from optimizer.results import FAILED, MEASURED, PRUNED, CandidateResult, sig3
from optimizer.space import Candidate


def rough_duration(seconds: float) -> str:
    """`~40 s`, `~7 min`: an estimate's resolution."""
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"


def time_left_note(estimate: float | None, budget_left: float | None, typical: float) -> str:
    """The progress line's tail: the search's time left, or that the budget's rest fits no further
    candidate (none starts with less than a typical measurement's time left, runner.py): `~20 s
    left` would promise time that goes unused. Empty before an estimate and when nothing is left."""
    if not estimate:
        return ""
    if budget_left is not None and budget_left < typical:
        return f"; search: no further candidate fits the {rough_duration(budget_left)} of budget left"
    return f"; search: {rough_duration(estimate)} left (estimate)"


def measuring_line(index: int, total: int, candidate: Candidate, role: str) -> str:
    """The line that says a measurement starts; its result's line follows when it ends."""
    return f"[{index}/{total}] measuring {candidate.label()}{' (baseline)' if role == 'baseline' else ''} ..."


def progress_line(index: int, total: int, result: CandidateResult, mine: bool) -> str:
    head = f"[{index}/{total}] {result.candidate.label():<40}"
    if result.reused:
        tag = " (stored)"
    elif result.status == PRUNED:
        tag = ""
    else:
        tag = f" ({result.seconds:.0f} s{'' if mine else ', another worker'})"
    if result.status == FAILED:
        return f"{head} FAILED {result.reason}{tag}"
    parts = []
    if result.quality is not None:
        q = result.quality
        parts.append(f"ppl {q.ppl_increase:+.2%} top1 {q.top1_agreement:.1%} KL {sig3(q.mean_kl)}")
    if result.status != MEASURED:  # a stored measurement may be rejected under this run's bound
        parts.append(f"{result.status.upper()}: {result.reason}")
    if result.performance is not None:
        p = result.performance
        slo = "SLO ok" if p.slo_met else "SLO missed"
        parts.append(
            f"{p.tokens_per_second.mean:.1f} tok/s | {sig3(p.tokens_per_joule.mean)} tok/J "
            f"(goodput {sig3(p.goodput_tokens_per_joule.mean)}, {p.source}) | {slo}"
        )
    return f"{head} {' | '.join(parts)}{tag}"
