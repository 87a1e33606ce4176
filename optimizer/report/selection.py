"""The report's selection part: the finalists re-measured side by side, their intervals, and
whether the winner is distinguishable from the runner-up."""

from __future__ import annotations

import math

from optimizer.results import sig3
from optimizer.select import Selection, percent_down


def selection_section(
    selection: Selection | None, estimate_mark: str, lone_reason: str | None = None
) -> list[str]:
    """`lone_reason`: `lone_edge_reason` of a candidate selected without finalists (no Selection),
    so its edge of the SLO is flagged as a finalist winner's is."""
    if selection is None:
        if lone_reason is None:
            return []
        return [
            "## Selection",
            "",
            f"{estimate_mark}No finalists were compared (one feasible candidate, search.finalists "
            f"< 2, or a remote launcher): {lone_reason}.",
            "",
        ]
    lines = [
        "## Selection among finalists",
        "",
        f"{estimate_mark}"
        + (
            "No candidate met the latency SLO in the search; those that missed it by at most "
            "search.near_miss (*near misses*) were re-measured in interleaved rounds, and one can be "
            "selected only by meeting the SLO in every re-measurement."
            if selection.only_near_misses
            else "The search's best feasible candidates, re-measured side by side in interleaved "
            "rounds; the winner is chosen on these figures, not on the search's (the best of noisy means "
            "runs high). A *near miss* missed the latency SLO in the search by at most search.near_miss "
            "with more tokens/J (every token counted) than the best feasible goodput: it can win only "
            "by meeting the SLO in every re-measurement."
        ),
        "",
        "| finalist | goodput tok/J | 95% interval | windows | latency headroom | feasible |",
        "|---|---|---|---|---|---|",
    ]
    for f in selection.finalists:
        span = (
            f"{sig3(f.shown_low)} – {sig3(f.high)}"
            if math.isfinite(f.low) and math.isfinite(f.high)
            else "n/a"
        )
        headroom = "-" if f.headroom is None else percent_down(f.headroom)
        mean = sig3(f.mean) if f.samples else "failed"  # (no window: not 0 tok/J)
        lines.append(
            f"| {f.label}{' (near miss)' if f.near_miss else ''} | {mean} | {span} | {len(f.samples)} | {headroom} | {'yes' if f.feasible else 'no'} |"
        )
    if not selection.feasible:
        verdict = "Nothing selected"
    elif len(selection.finalists) == 1:
        verdict = "The only finalist"
    else:
        verdict = (
            "The winner is "
            + ("distinguishable from" if selection.distinguishable else "**not distinguishable** from")
            + " the runner-up"
        )
    lines += ["", f"{verdict}: {selection.reason}.", ""]
    return lines
