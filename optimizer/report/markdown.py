"""report.md: the selected candidate, the baseline, the facility roll-up and every candidate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.config import QUALITY_REFERENCES, AccountingConfig, RunConfig
from optimizer.errors import UserError
from optimizer.files import write_atomically
from optimizer.measure.setup import MeasurementSetup
from optimizer.measure.workload import PerformanceResult, Spread, source_label
from optimizer.report.backend_table import backends_section, remeasured_label
from optimizer.report.flags import (
    compared_sources,
    flags_section,
    metered_device,
    mixed_sources_note,
    results_sources,
    source_groups,
)
from optimizer.report.numbers import quality_cells as _q
from optimizer.report.plots import plot_pareto
from optimizer.report.selection import selection_section
from optimizer.report.serving import serving_section, workload_line
from optimizer.results import (
    FAILED,
    MEASURED,
    PRUNED,
    REJECTED,
    CandidateResult,
    ratio_text,
    sig3,
    sig3_decimals,
)
from optimizer.select import Selection, as_selected, lone_edge_reason, pareto_front, with_selected
from optimizer.space import Candidate, layout_record
from optimizer.version import tool_version

if TYPE_CHECKING:
    from optimizer.search.runner import SearchOutcome

JOULES_PER_KWH = 3.6e6


def energy_source_note(source: str, setup: MeasurementSetup) -> str:
    if source == "estimate":
        t = setup.target
        # a CPU target either way (make_meter refuses the estimate on a GPU): why it was not measured
        why = (
            "asked for by target.energy_source=estimate (a RAPL counter, if readable, is not used)"
            if t.energy_source == "estimate"
            else "no energy counter is readable for this CPU target (RAPL's /sys/class/powercap missing or root-only)"
        )
        return (
            f"**ESTIMATE** — {why}. Joules = process CPU "
            f"seconds × {t.cpu_active_watts_per_core:g} W/core + wall seconds × {_cores(t.cores)} × "
            f"{t.cpu_idle_watts_per_core:g} W/core (target.cpu_*_watts_per_core). Ratios between candidates "
            "are meaningful; absolute joules are not a measurement."
        )
    return SOURCE_NOTES.get(source, f"**measured** by `{source}`.")


# Every energy source by its name (energy.py); an unknown one is named as it is, never as another.
SOURCE_NOTES = {
    "nvml": "**measured**: NVML total-energy counter of the GPU (millijoule counter, CUDA synced at window edges).",
    "nvml-power-poll": "**measured**: NVML board power polled through each window and integrated "
    "(`nvml-power-poll`: this GPU has no total-energy counter, or it stopped advancing; coarser than the counter).",
    "rapl": "**measured**: Linux RAPL package energy counters (/sys/class/powercap).",
}
ESTIMATE_MARK = "**ESTIMATE** (CPU-time energy estimate, not a measurement)"


def estimate_mark(source: str) -> str:
    """A prefix for a table whose joules are the labelled estimate; empty for a measurement."""
    return f"{ESTIMATE_MARK}: " if source == "estimate" else ""


def rollup(tokens_per_joule: float, accounting: AccountingConfig) -> dict[str, float]:
    """Per million tokens at `tokens_per_joule` (the report passes goodput): device kWh, facility
    kWh (x PUE), gCO2 and cost; empty at 0."""
    if tokens_per_joule <= 0:
        return {}
    device_kwh = 1e6 / tokens_per_joule / JOULES_PER_KWH
    facility_kwh = device_kwh * accounting.pue
    return {
        "device_kwh": device_kwh,
        "facility_kwh": facility_kwh,
        "gco2": facility_kwh * accounting.grid_gco2_per_kwh,
        "cost": facility_kwh * accounting.price_per_kwh,
    }


def write_report(
    output_dir: Path,
    cfg: RunConfig,
    setup: MeasurementSetup,
    outcome: SearchOutcome,
    excluded: Sequence[tuple[Candidate, str]],
    best: CandidateResult | None,
    idle_watts: float,
    infeasible: UserError | None,
    selection: Selection | None = None,
    finalist_rounds: Sequence[CandidateResult] = (),
) -> Path:
    """report.md (and pareto.png) of a run; `finalist_rounds` are the finalists' re-measurements,
    one result per candidate and round, whose windows the measurement flags show too."""
    # the windows' own sources: a meter that fell back mid-search (energy.py) measured some of them
    groups = source_groups([*outcome.results, *finalist_rounds, *([best] if best else [])])
    # the figures' source for their marks: an estimate mixed with measurement is no measurement
    source = "estimate" if "estimate" in groups and len(groups) > 1 else setup.meter.source
    shown = with_selected(outcome.selectable, best)  # the search's rows, a near miss's that won re-measured
    # the selected one at the figures it was selected on, where the plot's star is
    front = pareto_front(as_selected(outcome.selectable, best))
    # the plot's axis names its points' own sources, not the meter's now (results reused from a run
    # whose NVML counter fell back to polled power read nvml-power-poll)
    axis = source if source == "estimate" else source_label(groups) or source
    plot_pareto(
        output_dir / "pareto.png", outcome.results, front, best, outcome.baseline, cfg.quality.max_kl, axis
    )
    model, target = setup.model, setup.target
    note = (
        mixed_sources_note(groups, best)
        if len(groups) > 1
        else energy_source_note(next(iter(groups), source), setup)
    )
    device = target.gpu.name if target.gpu else f"{target.cpu_model} ({_cores(target.cores)})"
    lines = [
        f"# wattsmith report: {model.name} on {device}",
        "",
        f"- created {datetime.now(timezone.utc).isoformat(timespec='seconds')} by wattsmith {tool_version()}",
        f"- model `{model.source}` ({model.format}, {model.shape.num_parameters / 1e6:.1f} M parameters, "
        f"weights sha256 `{model.weight_sha256[:16]}…`)",
        f"- energy source: {note}",
        f"- idle power before the search: {idle_watts:.1f} W ({setup.meter.source}); *total* energy is reported, "
        "*active* = total − idle × seconds",
        workload_line(cfg.workload, setup.stream),
        f"- SLO: {_slo_text(cfg)}; **goodput** counts only output tokens of requests that met it, "
        "**throughput** counts all",
        # the bound as set, not rounded: 97.5% shown as 98% would seem broken by a 97.7% candidate
        f"- quality bound: perplexity ≤ +{_percent(cfg.quality.max_ppl_increase)}, top-1 agreement ≥ "
        f"{_percent(cfg.quality.min_top1_agreement)}, mean KL ≤ {cfg.quality.max_kl:g} nats, "
        f"vs {QUALITY_REFERENCES[cfg.quality.reference]} on "
        f"{cfg.quality.num_sequences}×{cfg.quality.seq_tokens} held-out tokens of `{cfg.quality.text}`",
        "",
    ]
    lines += _selected_section(
        best, outcome.baseline, cfg.accounting, infeasible, source, selection is not None
    )
    layout = layout_record(best.candidate, target) if best else None
    if layout:  # several processes: say where they ran
        lines += [f"- selected layout: {', '.join(f'{k} {v}' for k, v in layout.items())}", ""]
    # no finalists re-measured: a best at the SLO's edge is flagged as a finalist winner is
    lone = lone_edge_reason(best, cfg.workload.slo, cfg.search.slo_margin) if best and not selection else None
    lines += selection_section(selection, estimate_mark(source), lone)
    lines += _search_section(outcome, excluded, cfg, finalist_rounds)
    lines += backends_section(shown, excluded, outcome.baseline, estimate_mark(source))
    mark = estimate_mark(source)
    lines += serving_section(outcome.results, output_dir, mark)
    lines += ["## Energy-quality trade-off", "", "![Pareto plot](pareto.png)", ""]
    if front:
        which = (  # two figures for the selected candidate: say which one is listed
            "; the selected candidate at its finalist re-measurement, as the plot's star, "
            "the others as the search measured them"
            if any(r.role == "finalist" for r in front)
            else ""
        )
        lines += [f"{mark}Pareto front (goodput tokens/J up, KL down{which}):", ""]
        lines += [f"- {remeasured_label(r)}: {sig3(r.objective)} tok/J, KL {_kl(r)}" for r in front]
        lines.append("")
    lines += _candidates_table(outcome.results, mark, outcome.baseline_in_space)
    lines += flags_section(outcome.results, finalist_rounds, mark)
    if excluded:
        lines += ["## Excluded by rules", ""]
        for reason, count in Counter(reason for _, reason in excluded).most_common():
            lines.append(f"- {count} × {reason}")
        lines.append("")
    return write_atomically(output_dir / "report.md", "\n".join(lines) + "\n")


def _slo_text(cfg: RunConfig) -> str:
    slo = cfg.workload.slo
    parts = []
    if slo.tpot_ms is not None:
        parts.append(f"TPOT p{slo.percentile:g} ≤ {slo.tpot_ms:g} ms")
    if slo.ttft_ms is not None:
        parts.append(f"TTFT p{slo.percentile:g} ≤ {slo.ttft_ms:g} ms")
    return ", ".join(parts) or "none"


def _selected_section(
    best: CandidateResult | None,
    baseline: CandidateResult,
    accounting: AccountingConfig,
    infeasible: UserError | None,
    source: str,
    remeasured: bool = False,
) -> list[str]:
    lines = ["## Selected", ""]
    if best is None:
        assert infeasible is not None
        return lines + [f"**Nothing feasible.** {infeasible}", ""]
    rows = [("selected", best), ("baseline", baseline)]
    if source == "estimate":
        lines += [f"{estimate_mark(source)}the energy columns.", ""]
    if remeasured:  # else a reader finds two figures for one candidate and no word on which is which
        lines += [
            "The selected row is its re-measurement as a finalist (energy: every round's windows; "
            "latency: the last round); the tables after the finalists' show each candidate as the "
            "search measured it.",
            "",
        ]
    lines += [
        "| | settings | goodput tok/J (mean ± sd) | tok/J (all) | active tok/J | tok/s | W | TPOT p90 ms | ppl Δ | top-1 | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        p, q = r.performance, r.quality
        if p is None:
            lines.append(f"| {name} | {r.candidate.label()} | {_cell(f'{r.status}: {r.reason}')} |||||||||")
            continue
        lines.append(
            f"| {name} | {r.candidate.label()} | {_spread(p.goodput_tokens_per_joule, len(p.windows))} | {sig3(p.tokens_per_joule.mean)} "
            f"| {_active(p.active_tokens_per_joule.mean)} | {p.tokens_per_second.mean:.1f} | {p.watts.mean:.1f} "
            f"| {p.latency.tpot_ms['p90']:.0f} | {_q(q)} |"
        )
    lines.append("")
    if baseline.objective > 0:
        ratio = best.objective / baseline.objective
        gain = ratio_text(ratio)
        label = baseline.candidate.label()
        lines.append(
            f"**{gain}×** the baseline's goodput tokens per joule ({label}): **below the baseline**"
            if ratio < 1
            else f"**{gain}×** goodput tokens per joule over the baseline ({label})"
        )
        lines[-1] += compared_sources(best, baseline)
        lines.append("")
    device = metered_device(results_sources([best, baseline]) or (source,))
    lines += [
        f"{estimate_mark(source)}Facility roll-up per million goodput tokens (output tokens of requests "
        f"that met the SLO): device kWh are {device} energy only, not the rest of the host's; facility "
        f"kWh = device kWh × PUE {accounting.pue:g}; {accounting.grid_gco2_per_kwh:g} gCO2/kWh, "
        f"{accounting.price_per_kwh:g} {accounting.currency}/kWh. Arithmetic on the energy above: every "
        "window's joules over all their goodput tokens.",
        "",
        "| | device kWh | facility kWh | gCO2 | cost |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        if r.performance is None:
            continue
        ru = rollup(r.performance.pooled_goodput, accounting)
        if ru:
            # significant digits: at GPU-scale tokens/J fixed decimals read 0.0000; fixed notation:
            # a CPU's grams per million tokens run into thousands (6.67e+03)
            lines.append(
                f"| {name} | {sig3(ru['device_kwh'])} | {sig3(ru['facility_kwh'])} | {sig3(ru['gco2'])} "
                f"| {sig3(ru['cost'])} {accounting.currency} |"
            )
        else:
            lines.append(f"| {name} | {_no_rollup(r.performance)} | | | |")
    return lines + [""]


def _no_rollup(performance: PerformanceResult) -> str:
    """Why a row has no roll-up: 0 goodput tok/J is also what windows that read no joules give
    (a broken meter), which is no verdict on the SLO."""
    windows = performance.windows
    if windows and sum(w.joules for w in windows) <= 0:
        return f"the meter read {sum(w.joules for w in windows):g} J: nothing to roll up"
    return "no request met the SLO: unbounded per goodput token"


def _search_section(
    outcome: SearchOutcome,
    excluded: Sequence[tuple[Candidate, str]],
    cfg: RunConfig,
    finalist_rounds: Sequence[CandidateResult] = (),
) -> list[str]:
    counts = Counter(r.status for r in outcome.results)
    reused = sum(r.reused for r in outcome.results)
    feasible = sum(r.feasible for r in outcome.results)
    search = cfg.search
    sampler = search.sampler if search.sampler != "optuna" else f"optuna ({search.optuna.algorithm})"
    lines = [
        "## Search",
        "",
        f"- sampler {sampler}, {search.workers} worker(s) ({cfg.launcher.kind}), budget "
        f"{search.budget_minutes:g} min"
        + (f" / {search.max_candidates} candidates" if search.max_candidates else ""),
        f"- measured {counts[MEASURED]} (feasible {feasible}{_outside(outcome)}), rejected by the quality bound {counts[REJECTED]}, "
        f"failed {counts[FAILED]}, pruned {counts[PRUNED]}, excluded by rules {len(excluded)}, "
        f"not reached (budget, search.max_candidates or search.patience) {len(outcome.not_reached)}",
        f"- {reused} results reused from the store; {_evaluating(outcome, finalist_rounds)}",
    ]
    pruned = Counter(_reason_kind(r.reason) for r in outcome.results if r.status == PRUNED)
    if pruned:
        lines.append(
            "- pruned before building: " + ", ".join(f"{n} by {kind}" for kind, n in pruned.most_common())
        )
    if outcome.roofline:
        lines.append(f"- roofline bound from {outcome.roofline}")
    reports = outcome.workers or []
    invalid = sum(w.invalid_proposals for w in reports)
    mapped = sum(w.mapped_proposals for w in reports)
    if invalid or mapped:
        lines.append(
            f"- Optuna proposed {invalid} combination(s) outside the valid set (never measured: told as "
            f"infeasible to TPE, as failed to NSGA-II); {mapped} suggestion(s) were mapped onto the nearest unevaluated candidate"
        )
    if len(reports) > 1:
        lines.append("- evaluated per worker: " + ", ".join(str(w.evaluated) for w in reports))
    return lines + [""]


def _evaluating(outcome: SearchOutcome, finalist_rounds: Sequence[CandidateResult]) -> str:
    """This run's evaluation time: the search's store counts its own context only, the finalists'
    rounds are kept apart (a round an earlier run stored took none of it)."""
    finalists = sum(r.seconds for r in finalist_rounds if not r.reused)
    said = f"{outcome.measuring_seconds + finalists:.0f} s spent evaluating in this run (summed over workers)"
    return said + (f", {finalists:.0f} s of them re-measuring finalists" if finalist_rounds else "")


def _outside(outcome: SearchOutcome) -> str:
    """A baseline outside the space counts as measured (and feasible) but is never selected: say so,
    or "Nothing feasible" reads beside "feasible 1"."""
    if outcome.baseline_in_space or outcome.baseline.status != MEASURED:
        return ""
    return f"; counting the baseline: {OUTSIDE_SPACE}"


OUTSIDE_SPACE = "outside the space, measured for the ratios only, not selectable"


def _reason_kind(reason: str | None) -> str:
    """`roofline` or `memory`: what a pruning reason is about."""
    return "roofline" if reason and reason.startswith("roofline") else "memory"


def _candidates_table(
    results: Sequence[CandidateResult], estimate_mark: str = "", baseline_in_space: bool = True
) -> list[str]:
    lines = [
        "## All candidates",
        "",
        *([f"{estimate_mark}the tokens/J columns.", ""] if estimate_mark else []),
        "| candidate | status | ppl Δ | top-1 | KL | tok/s | tok/J | goodput tok/J (mean ± sd) | TPOT p90 ms | TTFT p90 ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {MEASURED: 0, REJECTED: 1, FAILED: 2, PRUNED: 3}
    for r in sorted(results, key=lambda r: (order.get(r.status, 9), -r.objective)):
        p = r.performance
        status = "feasible" if r.feasible else r.status
        note = r.reason or ("; ".join(p.slo_violations) if p else "")
        if r.role == "baseline":
            baseline = "baseline." if baseline_in_space else f"baseline ({OUTSIDE_SPACE})."
            note = f"{baseline} {note}".strip()
        perf = (
            f"{p.tokens_per_second.mean:.1f} | {sig3(p.tokens_per_joule.mean)} | {_spread(p.goodput_tokens_per_joule, len(p.windows))} "
            f"| {p.latency.tpot_ms['p90']:.0f} | {p.latency.ttft_ms['p90']:.0f}"
            if p
            else " | | | | "
        )
        lines.append(f"| {r.candidate.label()} | {status} | {_q(r.quality)} | {perf} | {_cell(note)} |")
    return lines + [""]


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


def _cell(text: str) -> str:
    """Free text (a failure's reason) in a table cell: a pipe would end the cell."""
    return text.replace("|", "/")


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}%"  # (rounded past float noise: 0.0025 * 100 is 0.25000000000000006)


def _spread(spread: Spread, windows: int) -> str:
    """Mean ± sd over the windows; one window has no spread to show (its sd is stored as 0)."""
    if windows < 2:
        return f"{sig3(spread.mean)} (1 window)"
    decimals = sig3_decimals(spread.mean)  # the sd to the mean's last digit
    return f"{sig3(spread.mean)} ± {sig3(spread.std, decimals)}"


def _active(mean: float) -> str:
    """Active tokens/J; 0 only when every window was at or below idle (flagged), with nothing left."""
    return sig3(mean) if mean > 0 else "n/a (≤ idle)"


def _kl(result: CandidateResult) -> str:
    return sig3(result.quality.mean_kl) if result.quality else "n/a"
