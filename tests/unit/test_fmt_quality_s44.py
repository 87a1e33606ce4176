"""An overflowing candidate's quality (NaN or infinite figures, rejected for it) reads "not finite"
in the report's tables, not a raw "+inf%" or "nan"."""

from __future__ import annotations

import math

from optimizer.config import AccountingConfig
from optimizer.measure.quality import QualityResult
from optimizer.report.markdown import _candidates_table, _selected_section
from optimizer.results import REJECTED

from .factories import candidate_result, performance_result, quality_result, torch_candidate

OVERFLOW = QualityResult(
    perplexity=math.inf,
    reference_perplexity=10.0,
    ppl_increase=math.inf,
    top1_agreement=math.nan,
    mean_kl=math.nan,
    tokens=256,
    seconds=0.5,
)
REASON = "quality metrics are not finite (numerical overflow in this precision?)"


def _quality_cells(row: str, first: int) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")[first : first + 3]]


def test_a_rejected_overflow_reads_not_finite_in_the_candidates_table() -> None:
    rejected = candidate_result(
        torch_candidate(batch_size=2), status=REJECTED, quality=OVERFLOW, reason=REASON
    )
    fine = candidate_result(
        torch_candidate(batch_size=4),
        quality=quality_result(mean_kl=0.0123, ppl_increase=0.02, top1_agreement=0.95),
        performance=performance_result(),
    )
    lines = _candidates_table([rejected, fine])
    row = next(line for line in lines if line.startswith(f"| {rejected.candidate.label()} |"))
    assert _quality_cells(row, 2) == ["not finite"] * 3
    # finite figures as before
    row = next(line for line in lines if line.startswith(f"| {fine.candidate.label()} |"))
    assert _quality_cells(row, 2) == ["+2.00%", "95.0%", "0.0123"]


def test_a_non_finite_figure_reads_not_finite_in_the_selected_table() -> None:
    best = candidate_result(
        torch_candidate(batch_size=4), quality=quality_result(), performance=performance_result()
    )
    # a baseline measured for the ratios whose quality overflowed: one figure infinite, the rest finite
    quality = quality_result(ppl_increase=math.inf, top1_agreement=0.5, mean_kl=3.0)
    baseline = candidate_result(role="baseline", quality=quality, performance=performance_result())
    lines = _selected_section(best, baseline, AccountingConfig(), None, "estimate")
    row = next(line for line in lines if line.startswith("| baseline |"))
    assert _quality_cells(row, 8) == ["not finite", "50.0%", "3.00"]
