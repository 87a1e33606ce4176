"""The Pareto plot: KL is never negative, so neither is any tick of its axis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimizer.report.plots import pareto_figure, plot_pareto
from optimizer.results import REJECTED

# a label whose number starts with a minus sign ("-1", "$\\mathdefault{-10^{-1}}$", "\u22121")
NEGATIVE = re.compile(r"^\$?(\\mathdefault\{)?[-\u2212]")


@pytest.mark.parametrize(
    "kls",
    [[0.0], [0.0, 0.05], [0.0, 1e-5, 2e-3, 0.3], [0.2, 0.3], [0.0, 5.0, 40.0], [-1e-9, 0.01]],
    ids=["only-zero", "at-the-bound", "spread", "all-above-zero", "huge", "rounding-below-zero"],
)
def test_no_kl_tick_is_negative(
    kls, tmp_path: Path, make_result, make_candidate, make_quality, make_performance
):
    import matplotlib.pyplot as plt

    results = [
        make_result(
            candidate=make_candidate(batch_size=2**i),
            quality=make_quality(mean_kl=kl),
            performance=make_performance(goodput_tokens_per_joule=1.0 + i),
        )
        for i, kl in enumerate(kls)
    ]
    rejected = make_result(
        candidate=make_candidate(batch_size=999), status=REJECTED, quality=make_quality(mean_kl=0.5)
    )
    baseline = results[0]
    fig = pareto_figure([*results, rejected], results[:1], results[-1], baseline, 0.05, "estimate")
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        left, right = ax.get_xlim()
        shown = [t for t in ax.get_xticklabels() if left <= t.get_position()[0] <= right]
        labels = [t.get_text() for t in shown]
        assert "$\\mathdefault{0}$" in labels
        assert not [text for text in labels if NEGATIVE.match(text)], labels
        assert all(t.get_position()[0] >= 0 for t in shown)
        assert -1e-4 < left < 0  # just left of 0: points at 0 show whole
    finally:
        plt.close(fig)
    assert plot_pareto(tmp_path / "p.png", results, results[:1], None, baseline, 0.05, "rapl").is_file()
