"""Figures as the report's tables print them where they may not be finite."""

from __future__ import annotations

import math

from optimizer.measure.quality import QualityResult
from optimizer.results import sig3

NOT_FINITE = "not finite"


def finite(value: float, text: str) -> str:
    """`text` (`value` formatted), or "not finite": a candidate whose quality overflowed in its
    precision (rejected for it) read "+inf%" and "nan" beside the others' figures."""
    return text if math.isfinite(value) else NOT_FINITE


def quality_cells(quality: QualityResult | None) -> str:
    """The ppl Δ, top-1 and KL cells of a table row (empty without a quality measurement)."""
    if quality is None:
        return " | | "
    return " | ".join(
        (
            finite(quality.ppl_increase, f"{quality.ppl_increase:+.2%}"),
            finite(quality.top1_agreement, f"{quality.top1_agreement:.1%}"),
            finite(quality.mean_kl, sig3(quality.mean_kl)),
        )
    )
