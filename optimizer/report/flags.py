"""The report's measurement flags: what each candidate's energy windows warned about.

A window records its meter's warnings (an NVML window shorter than 20 counter periods, a serving
queue that kept growing, a CPU window whose CPU time a VM's hypervisor or other processes took), the
polled-power integral beside the NVML counter, the GPU's temperature and SM clock at its end, and
the cores' speed just before it (a fixed CPU probe, measure/speed.py). Here they are shown per
candidate, with the checks that need the figures: counter vs polled power, heat, clock changes
between windows, energy at or below the idle baseline, and cores running slower than their median
in the run.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence

from optimizer.measure.speed import SLOW_PROBE
from optimizer.measure.workload import PerformanceResult, WindowResult
from optimizer.results import CandidateResult

POLLED_MISMATCH = 0.10  # counter and polled power may differ this much (5% measured under load)
HOT_C = 85.0  # GPU temperature at which clocks are likely held back
CLOCK_DROP = 0.90  # an SM clock below this fraction of the candidate's highest: throttled or boosted


def window_flags(
    perf: PerformanceResult, usual_probe: float | None = None, usual_source: str | None = None
) -> list[str]:
    """What a candidate's windows flagged, each with the number of windows it applies to;
    `usual_probe` is the run's median CPU probe, which the windows' probes are held to, and
    `usual_source` the energy source of most windows in the run (None: one source throughout)."""
    windows = perf.windows
    of = f"of {len(windows)} windows"
    # one flag per kind of warning: a window's text carries its own figures ("kept growing (14.7)")
    kinds: dict[str, list[str]] = {}
    for text in (w for win in windows for w in win.warnings):
        kinds.setdefault(re.sub(r"\d+(?:\.\d+)?", "#", text), []).append(text)
    flags = [
        f"{texts[0] if len(set(texts)) == 1 else texts[0] + ', varying by window'} ({len(texts)} {of})"
        for texts in kinds.values()
    ]
    gaps = [
        abs(w.polled_joules - w.joules) / w.joules
        for w in windows
        if w.polled_joules is not None and w.joules > 0 and w.source == "nvml"
    ]
    if usual_source is not None:
        # a meter that fell back mid-search (energy.py): its tokens/J are another source's
        for source, count in Counter(w.source for w in windows if w.source != usual_source).items():
            flags.append(f"energy by `{source}`, most windows in the run by `{usual_source}` ({count} {of})")
    # active energy is clamped at 0 (measure/energy.py): such a window is left out of active tok/J
    at_idle = sum(w.joules > 0 and w.active_joules <= 0 for w in windows)
    if at_idle:
        flags.append(f"at or below the idle baseline: idle overestimated? ({at_idle} {of})")
    mismatched = [gap for gap in gaps if gap > POLLED_MISMATCH]
    if mismatched:
        flags.append(
            f"NVML counter and polled power differ by up to {max(mismatched):.0%} "
            f"(> {POLLED_MISMATCH:.0%}) ({len(mismatched)} {of})"
        )
    temperatures = [w.temperature_c for w in windows if w.temperature_c is not None]
    if temperatures and max(temperatures) >= HOT_C:
        hot = sum(t >= HOT_C for t in temperatures)
        flags.append(
            f"GPU at {max(temperatures):.0f} °C (≥ {HOT_C:.0f} °C: clocks may be held back) ({hot} {of})"
        )
    clocks = [w.sm_clock_mhz for w in windows if w.sm_clock_mhz is not None]
    if clocks and min(clocks) < CLOCK_DROP * max(clocks):
        flags.append(f"SM clock varied {min(clocks):.0f}–{max(clocks):.0f} MHz between windows")
    if usual_probe:
        speeds = [w.cpu_probe_mibps / usual_probe for w in windows if w.cpu_probe_mibps is not None]
        slow = [speed for speed in speeds if speed < SLOW_PROBE]
        if slow:
            flags.append(
                f"the cores ran a fixed CPU probe at {min(slow):.2f}x its median in this run before the "
                f"window (< {SLOW_PROBE:.2f}x per CPU second: a host's clock, a busy sibling thread): "
                f"these figures are slowed too ({len(slow)} {of})"
            )
    return flags


def median_probe(results: Sequence[CandidateResult]) -> float | None:
    """The median CPU probe of every window in these results: the cores' usual speed in the run.
    None: no window was probed."""
    probes = [
        w.cpu_probe_mibps
        for r in results
        if r.performance is not None
        for w in r.performance.windows
        if w.cpu_probe_mibps is not None
    ]
    return statistics.median(probes) if probes else None


def flags_section(
    results: Sequence[CandidateResult], finalist_rounds: Sequence[CandidateResult] = (), mark: str = ""
) -> list[str]:
    """Per measured candidate, then per finalist round (a result each, in round order per
    candidate): its windows' GPU temperature and clock (NVML) and their flags. `mark` leads the
    caption (the report's ESTIMATE label: a screened-out window's flag quotes its tokens/J)."""
    measured = [
        r for r in [*results, *finalist_rounds] if r.performance is not None and r.performance.windows
    ]
    if not measured:
        return []
    lines = ["## Measurement flags", ""]
    rows = []
    usual = median_probe(measured)
    sources = Counter(w.source for r in measured for w in _windows(r))
    usual_source = sources.most_common(1)[0][0] if len(sources) > 1 else None
    rounds: Counter[str] = Counter()
    for r in measured:
        perf = r.performance
        assert perf is not None
        label = r.candidate.label()
        if r.role == "finalist":
            rounds[label] += 1
            label += f" (finalist round {rounds[label]})"
        flags = window_flags(perf, usual, usual_source)
        heat = _span([w.temperature_c for w in perf.windows], "°C")
        clock = _span([w.sm_clock_mhz for w in perf.windows], "MHz")
        if flags or heat or clock:
            text = "; ".join(flags).replace("|", "/") or "none"
            rows.append(f"| {label} | {len(perf.windows)} | {heat} | {clock} | {text} |")
    if not rows:
        candidates = len(measured) - sum(r.role == "finalist" for r in measured)
        also = f" and {len(measured) - candidates} finalist rounds" if candidates < len(measured) else ""
        return [*lines, f"No energy window of the {candidates} measured candidates{also} was flagged.", ""]
    return [
        *lines,
        f"{mark}What the energy windows flagged (short NVML windows, counter vs polled power, a source "
        "other than most windows', heat, clock "
        "changes, a window at or below the idle baseline, a growing queue, CPU time a VM's "
        "hypervisor or other processes took, and a window measured again after such a one "
        "(workload.disturbed_retries), cores slower than usual in the run by a CPU probe timed "
        "before the window); GPU temperature and SM clock are read at each window's end.",
        "",
        "| candidate | windows | GPU temperature | SM clock | flags |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _span(values: Sequence[float | None], unit: str) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    return f"{low:.0f} {unit}" if round(low) == round(high) else f"{low:.0f}–{high:.0f} {unit}"


# what each source reads, for a run whose windows used more than one (energy.py's sources)
SOURCE_READINGS = {
    "nvml": "the NVML energy counter",
    "nvml-power-poll": "NVML board power polled and integrated, coarser than the counter",
    "rapl": "RAPL package counters",
    "estimate": "the CPU-time ESTIMATE",
}


# whose energy a source's joules are: the roll-up's kWh leave out the rest of the host
METERED_DEVICE = {
    "nvml": "the GPU boards' (NVML)",
    "nvml-power-poll": "the GPU boards' (NVML power polled)",
    "rapl": "the CPU package's (RAPL)",
    "estimate": "the CPU's (the estimate)",
}


def metered_device(sources: Sequence[str]) -> str:
    """Whose energy joules measured by `sources` are, as the roll-up names it: each source's
    device, joined where the rows were measured by more than one."""
    return " and ".join(
        METERED_DEVICE.get(s, f"the metered device's (`{s}`)") for s in dict.fromkeys(sources)
    )


def results_sources(results: Sequence[CandidateResult]) -> tuple[str, ...]:
    """The energy sources the results' own windows were measured by, in order of first use: not
    the meter's now (a result reused from a run whose NVML counter fell back read polled power)."""
    return tuple(
        dict.fromkeys(s for r in results if r.performance is not None for s in r.performance.sources)
    )


def _windows(result: CandidateResult) -> list[WindowResult]:
    return result.performance.windows if result.performance is not None else []


def window_sources(result: CandidateResult) -> list[str]:
    """The energy sources of a result's windows, in order of first use."""
    return list(dict.fromkeys(w.source for w in _windows(result)))


def source_groups(results: Sequence[CandidateResult]) -> dict[str, list[str]]:
    """Per energy source (in order of first use), the candidates whose windows it measured; a
    candidate whose windows used several is named under each with its share of windows."""
    groups: dict[str, list[str]] = {}
    for r in results:
        windows = _windows(r)
        counts = Counter(w.source for w in windows)
        label = r.candidate.label() + (" (finalist round)" if r.role == "finalist" else "")
        for source, count in counts.items():
            share = f" ({count} of {len(windows)} windows)" if len(counts) > 1 else ""
            named = groups.setdefault(source, [])
            if label + share not in named:
                named.append(label + share)
    return groups


def mixed_sources_note(groups: dict[str, list[str]], best: CandidateResult | None) -> str:
    """The report's energy-source note where windows were measured by more than one source (an NVML
    counter that stopped advancing is dropped for polled power from then on, measure/energy.py)."""
    parts = [
        f"`{source}` ({SOURCE_READINGS.get(source, source)}) measured {', '.join(labels)}"
        for source, labels in groups.items()
    ]
    selected = f"; the selected candidate's windows: {_named(window_sources(best))}" if best else ""
    # an estimate among them is no measurement, whatever it was mixed with
    lead = (
        "**ESTIMATE mixed with measurement**"
        if "estimate" in groups
        else "**measured by more than one source**"
    )
    return (
        lead + ": " + "; ".join(parts) + ". The search and the selection "
        "compared tokens/J across these sources as they were read (polled power is coarser than the "
        f"counter: a gain of a few % between sources is within their difference){selected}."
    )


def compared_sources(best: CandidateResult, baseline: CandidateResult) -> str:
    """How the selected candidate's energy source stands to the baseline's, for its gain line."""
    chosen, base = window_sources(best), window_sources(baseline)
    if chosen == base and len(chosen) < 2:
        return ", same energy source, same workload."
    if chosen == base:  # each in its own shares of windows: no one source
        return f", same workload; both by {_named(chosen)} (see the energy source note)."
    return (
        f", same workload; **energy sources differ**: the selected by {_named(chosen)}, "
        f"the baseline by {_named(base)} (see the energy source note)."
    )


def _named(sources: list[str]) -> str:
    """A result's energy sources as the report labels it: a mix says so, and an estimate in it too."""
    named = " and ".join(f"`{s}`" for s in sources) or "no window"
    if len(sources) < 2:
        return named
    return f"mixed {named}" + (" (**ESTIMATE** mixed in: not a measurement)" if "estimate" in sources else "")
