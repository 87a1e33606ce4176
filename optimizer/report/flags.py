"""The report's measurement flags: what each candidate's energy windows warned about.

A window records its meter's warnings (an NVML window shorter than 20 counter periods, a serving
queue that kept growing, a CPU window in which a VM's hypervisor took CPU time: steal), the
polled-power integral beside the NVML counter, and the GPU's temperature and SM clock at its end.
Here they are shown per candidate, with the checks that need the figures: counter vs polled
power, heat and clock changes between windows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from optimizer.measure.workload import PerformanceResult
from optimizer.results import CandidateResult

POLLED_MISMATCH = 0.10  # counter and polled power may differ this much (5% measured under load)
HOT_C = 85.0  # GPU temperature at which clocks are likely held back
CLOCK_DROP = 0.90  # an SM clock below this fraction of the candidate's highest: throttled or boosted


def window_flags(perf: PerformanceResult) -> list[str]:
    """What a candidate's windows flagged, each with the number of windows it applies to."""
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
    return flags


def flags_section(results: Sequence[CandidateResult]) -> list[str]:
    """Per measured candidate: its windows' GPU temperature and clock (NVML) and their flags."""
    measured = [r for r in results if r.performance is not None and r.performance.windows]
    if not measured:
        return []
    lines = ["## Measurement flags", ""]
    rows = []
    for r in measured:
        perf = r.performance
        assert perf is not None
        flags = window_flags(perf)
        heat = _span([w.temperature_c for w in perf.windows], "°C")
        clock = _span([w.sm_clock_mhz for w in perf.windows], "MHz")
        if flags or heat or clock:
            text = "; ".join(flags).replace("|", "/") or "none"
            rows.append(f"| {r.candidate.label()} | {len(perf.windows)} | {heat} | {clock} | {text} |")
    if not rows:
        return [*lines, f"No energy window of the {len(measured)} measured candidates was flagged.", ""]
    return [
        *lines,
        "What the energy windows flagged (short NVML windows, counter vs polled power, heat, clock "
        "changes, a growing queue, CPU time a VM's hypervisor took); GPU temperature and SM clock "
        "are read at each window's end.",
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
