"""Why a run selected nothing: the errors of a space left empty by the rules or the memory budget,
of finalists that did not hold up when re-measured, and of a search that found nothing feasible
(each names the constraint to change)."""

from __future__ import annotations

from collections import Counter

from optimizer.config import RunConfig, SloConfig
from optimizer.errors import UserError
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED, CandidateResult
from optimizer.search.plan import SearchPlan
from optimizer.select import Selection


def unreliable_finalists(selection: Selection | None, trace: bool = False) -> UserError | None:
    """The error of a run whose finalists all missed the SLO when measured again, if it is one. A
    run that found nothing feasible and whose near misses missed again gets `diagnose_infeasible`'s
    error, which names the constraint (and, on a request stream, the capacity measured)."""
    if selection is None or selection.feasible or selection.only_near_misses:
        return None
    # not the SLO's doing: no re-measurement of a finalist that met it in the search ran to the end
    if not any(f.samples for f in selection.finalists if not f.near_miss):
        return UserError(
            "search.finalists",
            selection.reason
            if selection.all_failed
            else f"{selection.reason}: every finalist that met the SLO in the search failed when re-measured",
            "fix what failed (report.md and the log name it), or set search.finalists=0 to select "
            "on the search's own measurements",
        )
    return UserError(
        "workload.slo",
        f"{selection.reason}: the search's runs met the SLO once, near its edge",
        f"loosen workload.slo or {'replay a slower trace' if trace else 'lower workload.rate'} "
        "(report.md has every run's latency), or raise search.finalist_rounds to see how often each "
        "candidate meets it",
    )


def nothing_to_search(plan: SearchPlan, cfg: RunConfig) -> UserError:
    """The error of a space left with no candidate by the target's rules or the memory budget."""
    if plan.pruned:
        field = "target.memory_gib" if cfg.target.memory_gib is not None else "space.batch_sizes"
        return UserError(
            field,
            f"all {len(plan.pruned)} candidates that run here are too big for the memory budget "
            f"(e.g. {plan.pruned[0][0].label()}: {plan.pruned[0][1]})",
            "raise target.memory_gib, or use smaller space.batch_sizes or quantized numerics",
        )
    reasons = Counter(reason for _, reason in plan.excluded).most_common(3)
    return UserError(
        "space",
        f"no candidate of the space runs on this target: {'; '.join(f'{n} × {r}' for r, n in reasons)}",
        "choose backends and settings this target runs (optimize --show-config shows the space)",
    )


def diagnose_infeasible(
    results: list[CandidateResult], not_reached: int = 0, capped: bool = False, slo: SloConfig | None = None
) -> UserError:
    """Name the constraint that left nothing feasible; `slo`: the run's, whose targets set are
    the ones to raise (None: both named)."""
    both = ("tpot_ms", "ttft_ms")  # a target left null is no limit to raise
    targets = [n for n in both if slo is None or getattr(slo, n) is not None] or list(both)
    raise_slo = f"raise workload.slo.{' / '.join(targets)}, or add smaller batch sizes to space.batch_sizes"
    rejected = [r for r in results if r.status == REJECTED]
    measured = [r for r in results if r.status == MEASURED and not r.feasible]
    failed = [r for r in results if r.status == FAILED]
    if measured:
        served = [r.performance.serving for r in measured if r.performance and r.performance.serving]
        # a trace (RequestStream.source "trace <file>") is replayed at its own rate (served[0].rate):
        # workload.rate changes nothing and workload.rates is refused
        if served and served[0].stream.startswith("trace "):
            return UserError(
                "workload.trace",
                f"no candidate holds the trace's {served[0].rate:g} req/s inside the SLO (latencies in report.md)",
                "loosen workload.slo, or replay a slower trace (its requests spread over a longer time)",
            )
        if served:  # a request stream: say what rate the best candidate could hold
            capacities = [s.capacity_rate for s in served if s.capacity_rate is not None]
            best = (
                f"the best capacity measured is {max(capacities):g} req/s"
                if capacities
                else ("no candidate held the SLO at any rate measured")
            )
            return UserError(
                "workload.rate",
                f"no candidate holds {served[0].rate:g} req/s inside the SLO; {best} (capacities in report.md)",
                "lower workload.rate, loosen workload.slo, or add workload.rates=[...] to find the capacity",
            )
        example = measured[0].performance.slo_violations if measured[0].performance else []
        return UserError(
            "workload.slo",
            f"all {len(measured)} measured candidates miss the latency SLO (e.g. {'; '.join(example) or 'see report'})",
            raise_slo,
        )
    slo_pruned = [r for r in results if r.status == PRUNED and "workload.slo" in (r.reason or "")]
    if slo_pruned:  # the roofline proved no candidate can meet the SLO: nothing was worth measuring
        return UserError(
            "workload.slo",
            f"no candidate can meet the latency SLO (e.g. {slo_pruned[0].reason})",
            raise_slo,
        )
    if rejected:
        # not "all" when others failed: their failures may be the thing to fix
        broke = f"{'all ' if not failed else ''}{len(rejected)} candidates break the quality bound"
        more = f"; {len(failed)} more failed (e.g. {failed[0].reason})" if failed else ""
        return UserError(
            "quality",
            f"{broke} (e.g. {rejected[0].reason}){more}",
            "use quality=relaxed or loosen quality.max_ppl_increase / min_top1_agreement / max_kl",
        )
    if failed:
        return UserError(
            "space", f"all {len(failed)} candidates failed (e.g. {failed[0].reason})", "see report.md"
        )
    if not_reached:  # the budget (`capped`: search.max_candidates) ran out before the space's turn
        return UserError(
            "search.max_candidates" if capped else "search.budget_minutes",
            f"no candidate of the space was measured within the budget ({not_reached} not reached)",
            "raise search.max_candidates (a baseline outside the space counts as one) or search.budget_minutes"
            if capped
            else "raise search.budget_minutes",
        )
    return UserError(
        "space", "no candidate could be evaluated", "widen the space or raise search.budget_minutes"
    )
