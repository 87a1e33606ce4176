"""The energy-quality trade-off plot (pareto.png)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.files import replacing_atomically
from optimizer.report.backend_table import remeasured_label
from optimizer.results import MEASURED, REJECTED, CandidateResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# KL below this is drawn on a linear scale (around 0), above it on a log scale
KL_LINEAR_BELOW = 1e-4


def plot_pareto(
    path: Path,
    results: Sequence[CandidateResult],
    front: Sequence[CandidateResult],
    best: CandidateResult | None,
    baseline: CandidateResult,
    max_kl: float,
    energy_source: str,
) -> Path:
    import matplotlib.pyplot as plt

    fig = pareto_figure(results, front, best, baseline, max_kl, energy_source)
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def save_figure(fig: Figure, path: Path) -> None:
    """`fig` as a PNG at `path`, whole or not at all: a crash mid-save (a full disk, an
    interrupt) leaves the earlier image, not a torn one beside a finished report."""
    with replacing_atomically(path) as temporary:
        fig.savefig(temporary, format="png")


def pareto_figure(
    results: Sequence[CandidateResult],
    front: Sequence[CandidateResult],
    best: CandidateResult | None,
    baseline: CandidateResult,
    max_kl: float,
    energy_source: str,
) -> Figure:
    """The trade-off plot as a matplotlib Figure (the caller saves and closes it). A result whose
    KL is not finite has no place on the KL axis: it is left out (the report lists it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, front = _drawable(results), _drawable(front)
    best = best if best is not None and _drawable([best]) else None

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    groups = {
        "feasible": [r for r in results if r.feasible],
        "misses SLO": [r for r in results if r.status == MEASURED and not r.feasible],
    }
    styles = {"feasible": ("o", "tab:blue"), "misses SLO": ("x", "tab:orange")}
    for name, members in groups.items():
        if members:
            marker, color = styles[name]
            ax.scatter(
                [_kl(r) for r in members],
                [r.objective for r in members],
                marker=marker,
                color=color,
                label=name,
                zorder=3,
            )
    rejected = [
        r for r in results if r.status == REJECTED and r.quality is not None and r.performance is None
    ]
    if rejected:
        ax.scatter(
            [_kl(r) for r in rejected],
            [0.0] * len(rejected),
            marker="|",
            s=200,
            color="tab:gray",
            label="breaks quality bound (not measured)",
            zorder=2,
        )
    if front:
        # ringed points: a front of one point is no line, and a bare dashed line would draw nothing
        ax.plot(
            [_kl(r) for r in front],
            [r.objective for r in front],
            "--",
            color="tab:green",
            marker="o",
            markersize=12,
            markerfacecolor="none",
            label="Pareto front",
        )
    if baseline.performance is not None and _drawable([baseline]):
        ax.scatter(
            [_kl(baseline)],
            [baseline.objective],
            marker="s",
            s=90,
            facecolors="none",
            edgecolors="black",
            label=f"baseline: {baseline.candidate.label()}",
            zorder=4,
        )
    if best is not None:
        ax.scatter(
            [_kl(best)],
            [best.objective],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            label=f"selected: {remeasured_label(best)}",
            zorder=5,
        )
    ax.axvline(max_kl, color="tab:red", linestyle=":", label=f"quality.max_kl = {max_kl:g}")
    ax.set_xscale("symlog", linthresh=KL_LINEAR_BELOW)
    # KL is never negative: start just left of 0, inside the linear part, so that points at 0
    # show whole and no negative tick appears; end a decade past the linear part at least, else
    # KLs of ~1e-7 with quality.max_kl=0 sat on the right edge beside a -5e-05 tick
    right = max(ax.get_xlim()[1], 10 * KL_LINEAR_BELOW)
    ax.set_xlim(-KL_LINEAR_BELOW / 2, right)
    ax.set_xlabel("quality loss: mean KL(reference || candidate), nats")
    unit = "tokens/J (ESTIMATE)" if energy_source == "estimate" else f"tokens/J ({energy_source})"
    ax.set_ylabel(f"goodput {unit}")
    ax.set_title("Energy-quality trade-off")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _kl(result: CandidateResult) -> float:
    # a measured KL a rounding error below 0 is 0
    return max(0.0, result.quality.mean_kl) if result.quality else 0.0


def _drawable(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    # max(0.0, nan) is 0.0: a NaN KL would be drawn where a lossless candidate sits
    return [r for r in results if r.quality is None or math.isfinite(r.quality.mean_kl)]
