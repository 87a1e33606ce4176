"""pareto.png: a result whose KL is not finite is left out, never drawn at KL = 0 (where a lossless
candidate sits: max(0.0, nan) is 0.0)."""

from __future__ import annotations

import math

import pytest
from matplotlib.figure import Figure

from optimizer.report.plots import pareto_figure
from optimizer.results import REJECTED
from unit.factories import candidate_result, performance_result, quality_result, torch_candidate


def _points(fig: Figure) -> dict[str, list[list[float]]]:
    """The data each scatter of the figure got, by legend label."""
    return {c.get_label(): c.get_offsets().tolist() for c in fig.axes[0].collections}


@pytest.mark.parametrize("kl", [math.nan, math.inf])
def test_a_rejected_result_with_a_non_finite_kl_is_not_drawn(kl: float) -> None:
    import matplotlib.pyplot as plt

    base = candidate_result(
        torch_candidate(), quality=quality_result(0.001), performance=performance_result()
    )
    broken = candidate_result(
        torch_candidate(precision="fp16"), status=REJECTED, quality=quality_result(mean_kl=kl)
    )
    lossy = candidate_result(
        torch_candidate(precision="bf16"), status=REJECTED, quality=quality_result(mean_kl=0.5)
    )
    fig = pareto_figure([base, broken, lossy], [], None, base, 0.05, "estimate")
    try:
        points = _points(fig)
    finally:
        plt.close(fig)
    assert points["breaks quality bound (not measured)"] == [[0.5, 0.0]]  # not [0.0, 0.0] as well
    assert points["feasible"] == [[0.001, 1.0]]


def test_a_baseline_with_a_nan_kl_is_not_drawn_at_zero() -> None:
    import matplotlib.pyplot as plt

    baseline = candidate_result(
        torch_candidate(precision="fp16"),
        status=REJECTED,
        quality=quality_result(mean_kl=math.nan),
        performance=performance_result(),
    )
    good = candidate_result(torch_candidate(), quality=quality_result(0.01), performance=performance_result())
    fig = pareto_figure([baseline, good], [good], good, baseline, 0.05, "estimate")
    try:
        points = _points(fig)
    finally:
        plt.close(fig)
    assert not any(label.startswith("baseline") for label in points)
    assert all(math.isfinite(x) and x != 0.0 for pts in points.values() for x, _ in pts)
