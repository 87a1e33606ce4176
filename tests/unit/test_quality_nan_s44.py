"""A NaN quality figure breaks the bound: NaN compares false both ways, so it passed every limit."""

from __future__ import annotations

import math

import pytest

from optimizer.config import QualityConfig
from optimizer.measure.quality import QualityResult


@pytest.mark.parametrize("field", ["ppl_increase", "top1_agreement"])
def test_a_nan_figure_breaks_the_bound(field: str) -> None:
    figures = {"ppl_increase": 0.0, "top1_agreement": 1.0, field: math.nan}
    result = QualityResult(
        perplexity=10.0, reference_perplexity=10.0, mean_kl=0.0, tokens=100, seconds=1.0, **figures
    )
    broken = result.violations(QualityConfig())
    assert broken and "not finite" in broken[0]


def test_finite_figures_inside_the_bound_break_nothing() -> None:
    result = QualityResult(10.0, 10.0, 0.0, 1.0, 0.0, 100, 1.0)
    assert result.violations(QualityConfig()) == []
