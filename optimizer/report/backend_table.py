"""The report's side-by-side view: the best candidate of each backend, against the baseline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from optimizer.backends.registry import SPECS_BY_NAME
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED, CandidateResult, sig3
from optimizer.select import select_best
from optimizer.space import Candidate


def best_per_backend(results: Sequence[CandidateResult]) -> dict[str, CandidateResult | None]:
    """The feasible candidate with the most goodput tokens/J per backend (None: none feasible),
    in registry order."""
    backends = {r.candidate.backend for r in results}
    return {
        backend: select_best([r for r in results if r.candidate.backend == backend])
        for backend in SPECS_BY_NAME
        if backend in backends
    }


def backends_section(
    results: Sequence[CandidateResult],
    excluded: Sequence[tuple[Candidate, str]],
    baseline: CandidateResult,
    mark: str = "",
) -> list[str]:
    """A table with one row per backend searched; empty when the search had one backend.
    `results` are the selectable ones (the baseline only when it was in the space); `mark`
    prefixes the caption (the report's ESTIMATE label when the joules are estimated)."""
    searched = list(results)
    backends = {r.candidate.backend for r in searched} | {c.backend for c, _ in excluded}
    if len(backends) < 2:
        return []
    best = best_per_backend(searched)
    lines = [
        "## Backends side by side",
        "",
        f"{mark}Best feasible candidate of each backend (same workload, energy source and quality bound).",
        "",
        "| backend | best candidate | goodput tok/J | × baseline | tok/s | TPOT p90 ms | ppl Δ | top-1 | KL | measured / rejected / failed / pruned / excluded |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend in [b for b in SPECS_BY_NAME if b in backends]:
        mine = [r for r in searched if r.candidate.backend == backend]
        counts = Counter(r.status for r in mine)
        reasons = Counter(reason for c, reason in excluded if c.backend == backend)
        tally = f"{counts[MEASURED]} / {counts[REJECTED]} / {counts[FAILED]} / {counts[PRUNED]} / {sum(reasons.values())}"
        winner = best.get(backend)
        if winner is None or winner.performance is None or winner.quality is None:
            why = _why_none(mine, reasons)
            lines.append(f"| {backend} | none feasible: {why} |||||||| {tally} |")
            continue
        p, q = winner.performance, winner.quality
        ratio = _ratio_to_baseline(winner, baseline)
        lines.append(
            f"| {backend} | {remeasured_label(winner)} | {sig3(winner.objective)} | {ratio} | {p.tokens_per_second.mean:.1f} "
            f"| {p.latency.tpot_ms['p90']:.0f} | {q.ppl_increase:+.2%} | {q.top1_agreement:.1%} | {sig3(q.mean_kl)} | {tally} |"
        )
    return [*lines, ""]


def remeasured_label(result: CandidateResult) -> str:
    """The candidate's label, marked where the figures are a finalist's re-measurement (a near miss
    that won) among rows of the search's figures."""
    return result.candidate.label() + (" (finalist re-measurement)" if result.role == "finalist" else "")


def _why_none(results: Sequence[CandidateResult], excluded_reasons: Counter[str]) -> str:
    if not results and excluded_reasons:
        return excluded_reasons.most_common(1)[0][0].replace("|", "/")
    for status in (MEASURED, REJECTED, FAILED, PRUNED):
        example = next((r for r in results if r.status == status), None)
        if example is not None:
            if status == MEASURED and example.performance is not None:
                what, reason = "misses the SLO", "; ".join(example.performance.slo_violations)
            else:
                what, reason = status, example.reason or "see below"
            return f"{what} (e.g. {example.candidate.label()}: {reason})".replace("|", "/")
    return "not reached (budget, candidate cap or patience)"


def _ratio_to_baseline(result: CandidateResult, baseline: CandidateResult) -> str:
    """Goodput tokens/J over the baseline's; all tokens/J when the baseline met no SLO."""
    if baseline.objective > 0:
        return f"{result.objective / baseline.objective:.2f}×"
    if baseline.performance is not None and result.performance is not None:
        base = baseline.performance.tokens_per_joule.mean
        if base > 0:
            return f"{result.performance.tokens_per_joule.mean / base:.2f}× (all tokens: baseline misses the SLO)"
    return "n/a"
