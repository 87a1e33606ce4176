"""The report's serving part: how each candidate served the request stream, what prefix reuse
saved, and the load curves (goodput tokens/J and p90 latencies against offered load)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.config import WorkloadConfig
from optimizer.results import CandidateResult, sig3

if TYPE_CHECKING:
    from optimizer.measure.stream import RequestStream
    from optimizer.measure.workload import PerformanceResult

# a load's submissions lagged: its runs submitted the stream this much slower than its arrivals
# (a load generator kept from the CPU), so the load measured is below the load named
SUBMISSION_LAG_FRACTION = 0.05


def workload_line(workload: WorkloadConfig, stream: RequestStream | None) -> str:
    if not workload.serving:
        return (
            f"- workload (offline batches): {workload.prompt_tokens}-token prompts, "
            f"{workload.max_new_tokens} new tokens (EOS ignored), windows ≥ {workload.min_window_seconds:g} s "
            f"× {workload.repeats} after {workload.warmup_batches} warm-up batch(es)"
        )
    curve = f"; load curve at {workload.load_rates()} req/s" if len(workload.load_rates()) > 1 else ""
    # a trace is replayed at its own times: selected at its own rate, not workload.rate
    rate = stream.offered_rate if workload.trace and stream else workload.rate
    # a short random stream's arrivals make a rate of their own: the load actually measured
    offered = (
        f"; its arrivals offer {_number(stream.offered_rate)} req/s"
        if stream and not workload.trace and _offered_beside(rate, stream.offered_rate)
        else ""
    )
    return (
        f"- workload (serving): request stream `{stream.source if stream else None}`, "
        f"selected at {rate:g} req/s{curve}{offered}; "
        f"each run offers the whole stream, its energy window spans the arrivals from request "
        f"{workload.warmup_requests + 1} to {_from_last(workload.drain_requests + 1)}; "
        f"{workload.repeats} run(s); TTFT counts from each request's arrival (queueing included)"
    )


def serving_section(
    results: Sequence[CandidateResult], output_dir: Path, estimate_mark: str = ""
) -> list[str]:
    """Empty when no result was measured on a stream. `estimate_mark` leads the text when the
    joules are the CPU-time estimate."""
    served = [r for r in results if r.performance is not None and r.performance.serving is not None]
    if not served:
        return []
    lines = [
        "## Serving the stream",
        "",
        f"{estimate_mark}Per candidate at the selection rate: goodput tokens/J (tokens of requests that met both "
        "TTFT and TPOT targets), pooled: all its runs' tokens over all their joules, as J/request "
        "divides them (the other tables' mean of per-window figures parts from it when windows differ), "
        "the share of requests that met them, energy per completed request, the share of the window "
        "with no request in flight (idle), and the capacity: the highest offered load measured at "
        "which >= 90% of requests met the SLO, its p90 verdict held and the queue did not grow. "
        "TTFT p90 leaves out requests "
        "given up unfinished with no first-token time told by the engine (their count in brackets).",
        "",
        "| candidate | goodput tok/J (pooled) | met SLO | J/request | TTFT p90 ms | TPOT p90 ms | E2E p90 ms | idle | in flight | capacity req/s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # pooled: total tokens over total joules, as J/request; a mean of per-window ratios can rank a
    # candidate above another whose J/request is lower on the same stream
    for r in sorted(served, key=lambda r: -r.performance.pooled_goodput if r.performance else 0.0):
        perf = r.performance
        assert perf is not None and perf.serving is not None
        s = perf.serving
        selected = next((p for p in s.curve if p["rate"] == s.rate), {})
        notes = ["queue grew: over capacity"] if s.growing_windows else []
        notes += [_lag_note(selected)] if lagged(selected) else []
        note = "; ".join(notes)
        held = next((p for p in s.curve if p["rate"] == s.capacity_rate), {})
        unknown = s.window_requests - perf.latency.requests  # left out of the TTFT percentiles
        ttft = f"{perf.latency.ttft_ms['p90']:.0f}" + (f" ({unknown} unknown)" if unknown > 0 else "")
        lines.append(
            f"| {r.candidate.label()} | {sig3(perf.pooled_goodput)} | {share(s.met_slo_fraction)} | "
            f"{_number(s.joules_per_request)} | {ttft} | "
            f"{perf.latency.tpot_ms['p90']:.0f} | {s.e2e_p90_ms:.0f} | {s.idle_fraction:.0%} | "
            f"{s.mean_in_flight:.1f} | {_number(s.capacity_rate)}{_offered_beside(s.capacity_rate, held.get('offered_rate'))} | {note} |"
        )
    lines.append("")
    lines += _prefix_lines(served, estimate_mark)
    if any(len(r.performance.serving.curve) > 1 for r in served if r.performance and r.performance.serving):
        plot_load(output_dir / "load.png", served, estimated=bool(estimate_mark))
        lines += [
            "### Load curves",
            "",
            f"{estimate_mark}Goodput tokens/J pooled at each offered load (all its tokens over all "
            "its joules), as in the table, drawn at the rate the stream's arrivals offer.",
            "",
            "![Load curves](load.png)",
            "",
            *_curve_table(served),
        ]
    return lines


def _curve_table(served: Sequence[CandidateResult]) -> list[str]:
    """Each load as named (workload.rates), as the stream's arrivals offer it and as its runs
    submitted it: a point whose submissions lagged measured a lighter load than its rate says."""
    lines = [
        "Load as named (workload.rates), as the stream's arrivals offer it (first to last arrival) "
        "and as submitted (the slowest run's first to last submission).",
        "",
        "| candidate | nominal req/s | offered req/s | submitted req/s | goodput tok/J (pooled) | met SLO | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in served:
        assert r.performance is not None and r.performance.serving is not None
        curve = r.performance.serving.curve
        if len(curve) < 2:
            continue
        for p, goodput in zip(curve, pooled_curve(r.performance), strict=True):
            notes = ["queue grew"] if p.get("growing") else []
            notes += [_lag_note(p)] if lagged(p) else []
            met = p.get("met_slo_fraction")
            lines.append(
                f"| {r.candidate.label()} | {_number(p['rate'])} | {_number(p.get('offered_rate'))} | "
                f"{_number(p.get('submitted_rate'))} | {sig3(goodput)} | {'-' if met is None else share(met)} | "
                f"{'; '.join(notes)} |"
            )
    return [*lines, ""]


def lagged(point: dict[str, float]) -> bool:
    submitted, offered = point.get("submitted_rate"), point.get("offered_rate")
    return (
        submitted is not None and offered is not None and submitted < offered * (1 - SUBMISSION_LAG_FRACTION)
    )


def _lag_note(point: dict[str, float]) -> str:
    return (
        f"submissions lagged: {_number(point['submitted_rate'])} of {_number(point['offered_rate'])} "
        "req/s offered (a busy host)"
    )


def _offered_beside(nominal: float | None, offered: float | None) -> str:
    """` (offered 1.78)` where the stream's arrivals make a load 1% or more off the nominal one."""
    if nominal is None or offered is None or abs(offered - nominal) < 0.01 * nominal:
        return ""
    return f" (offered {_number(offered)})"


def _prefix_lines(served: Sequence[CandidateResult], estimate_mark: str = "") -> list[str]:
    """Pairs of candidates that differ only in prefix sharing: what reuse saved. `estimate_mark`
    leads the caption, as every table's of estimated joules: its J/request are too."""
    by_key: dict[str, dict[bool, CandidateResult]] = {}
    for r in served:
        settings = asdict(r.candidate.settings)
        if "prefix_sharing" not in settings:
            continue
        sharing = bool(settings.pop("prefix_sharing"))
        key = repr(
            (r.candidate.backend, r.candidate.batch_size, r.candidate.threads, sorted(settings.items()))
        )
        by_key.setdefault(key, {})[sharing] = r
    pairs = [(p[True], p[False]) for p in by_key.values() if len(p) == 2]
    if not pairs:
        return []
    lines = [
        "### Prefix KV reuse",
        "",
        f"{estimate_mark}The same candidate with prefix sharing on and off, side by side on the same stream "
        "(`-`: the engine reported no prefix counters).",
        "",
        "| candidate | J/request on | off | saved | TTFT p90 ms on | off | prompt tokens reused | hits / lookups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for on, off in pairs:
        assert on.performance and off.performance and on.performance.serving and off.performance.serving
        son, soff = on.performance.serving, off.performance.serving
        saved = (
            f"{1 - son.joules_per_request / soff.joules_per_request:.0%}"
            if son.joules_per_request and soff.joules_per_request
            else "-"
        )
        prefix = son.prefix
        lines.append(
            f"| {on.candidate.label()} | {_number(son.joules_per_request)} | {_number(soff.joules_per_request)} | "
            f"{saved} | {on.performance.latency.ttft_ms['p90']:.0f} | {off.performance.latency.ttft_ms['p90']:.0f} | "
            f"{_reused_share(prefix)} | {_hits(prefix)} |"
        )
    lines.append("")
    return lines


def _reused_share(prefix: dict[str, float]) -> str:
    """The share of prompt tokens found cached; `-` where the engine reported no counters (or
    counted no prompt tokens: 0 of 0 is no measured 0%)."""
    saved = prefix.get("prefill_saved_fraction")
    if saved is None or prefix.get("prompt_tokens") == 0:
        return "-"
    return f"{saved:.0%}"


def _hits(prefix: dict[str, float]) -> str:
    """`hits / lookups`; `-` where the engine reported no counters (an engine without them, or a
    result stored before they were recorded), not a measured `0 / 0`."""
    hits, lookups = prefix.get("hits"), prefix.get("lookups")
    return "-" if hits is None or lookups is None else f"{hits:.0f} / {lookups:.0f}"


def plot_load(path: Path, served: Sequence[CandidateResult], estimated: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optimizer.report.plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), dpi=110)
    for r in served:
        assert r.performance is not None and r.performance.serving is not None
        curve = r.performance.serving.curve
        if len(curve) < 2:
            continue
        # where the stream's arrivals put each load (a curve stored without them: its nominal rate)
        rates = [p.get("offered_rate", p["rate"]) for p in curve]
        label = r.candidate.label()
        axes[0].plot(rates, pooled_curve(r.performance), marker="o", label=label)
        axes[1].plot(rates, [p["ttft_p90_ms"] for p in curve], marker="o", label=label)
        axes[2].plot(rates, [p["tpot_p90_ms"] for p in curve], marker="o", label=label)
    goodput = "goodput tokens/J (pooled)" + (" (ESTIMATE)" if estimated else "")
    titles = (goodput, "TTFT p90 (ms)", "TPOT p90 (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("offered load (requests/s, the stream's arrivals)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def pooled_curve(performance: PerformanceResult) -> list[float]:
    """The load curve's goodput tokens/J pooled, as the serving table's: a point records the mean
    of its runs' per-window figures, so the selection rate's (workload.repeats runs) takes the
    result's pooled figure; every other rate's one run is one window, its mean already pooled."""
    serving = performance.serving
    assert serving is not None
    return [
        performance.pooled_goodput if p["rate"] == serving.rate else p["goodput_tokens_per_joule"]
        for p in serving.curve
    ]


def share(fraction: float) -> str:
    """A percentage to whole points, but never 100% or 0% unless exactly so (99.6% of requests
    meeting the SLO read 100%, hiding the ones that missed): more decimals until it is not."""
    for places in range(0, 6):
        shown = f"{fraction:.{places}%}"
        if fraction in (0.0, 1.0) or float(shown[:-1]) not in (0.0, 100.0):
            return shown
    return shown


def _from_last(place: int) -> str:
    """`the 3rd from last` (a fixed "th" read "the 3th"), `the last` for 1."""
    if place == 1:
        return "the last"
    suffix = "th" if place % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"the {place}{suffix} from last"


def _number(value: float | None) -> str:
    """`.3g` (6, 12.5), in fixed notation where that is e-notation: from 1000 up it printed
    1.28e+03 (a CPU's or a large model's J/request, a small model's capacity req/s)."""
    if value is None:
        return "-"
    text = f"{value:.3g}"
    return sig3(value) if "e" in text else text
