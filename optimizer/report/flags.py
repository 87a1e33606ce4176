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
from optimizer.measure.workload import PerformanceResult
from optimizer.results import CandidateResult

POLLED_MISMATCH = 0.10  # counter and polled power may differ this much (5% measured under load)
HOT_C = 85.0  # GPU temperature at which clocks are likely held back
CLOCK_DROP = 0.90  # an SM clock below this fraction of the candidate's highest: throttled or boosted


def window_flags(perf: PerformanceResult, usual_probe: float | None = None) -> list[str]:
    """What a candidate's windows flagged, each with the number of windows it applies to;
    `usual_probe` is the run's median CPU probe, which the windows' probes are held to."""
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
    rounds: Counter[str] = Counter()
    for r in measured:
        perf = r.performance
        assert perf is not None
        label = r.candidate.label()
        if r.role == "finalist":
            rounds[label] += 1
            label += f" (finalist round {rounds[label]})"
        flags = window_flags(perf, usual)
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
        f"{mark}What the energy windows flagged (short NVML windows, counter vs polled power, heat, clock "
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
