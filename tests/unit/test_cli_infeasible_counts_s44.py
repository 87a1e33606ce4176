"""The error of a run with nothing feasible counts right: 2 candidates broke the quality bound and
3 failed is not "all 2 candidates break the quality bound" (optimizer/pipeline.py)."""

from __future__ import annotations

from optimizer.pipeline import diagnose_infeasible
from optimizer.results import FAILED, REJECTED
from unit.factories import candidate_result, torch_candidate

REJECTED_TWO = [candidate_result(torch_candidate(b), REJECTED, reason="ppl +9.0%") for b in (1, 2)]
FAILED_THREE = [candidate_result(torch_candidate(b), FAILED, reason="out of memory") for b in (4, 8, 16)]


def test_rejected_beside_failed_says_how_many_failed() -> None:
    error = diagnose_infeasible([*REJECTED_TWO, *FAILED_THREE])
    assert error.field == "quality"
    assert "all" not in error.problem
    assert error.problem.startswith("2 candidates break the quality bound (e.g. ppl +9.0%)")
    assert "3 more failed (e.g. out of memory)" in error.problem


def test_only_rejected_is_still_all() -> None:
    error = diagnose_infeasible(REJECTED_TWO)
    assert error.problem == "all 2 candidates break the quality bound (e.g. ppl +9.0%)"
