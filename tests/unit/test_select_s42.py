"""Selection and the pipeline's diagnoses: an overload is no near miss, a finalist's crash is not
blamed on the SLO, and the infeasible error names only the SLO targets that are set."""

from __future__ import annotations

from dataclasses import replace

from optimizer.config import SloConfig
from optimizer.measure.latency import LatencySummary
from optimizer.pipeline import diagnose_infeasible, unreliable_finalists
from optimizer.results import FAILED, CandidateResult
from optimizer.select import near_misses, select_finalist

from .factories import candidate_result, performance_result, torch_candidate

SLO = SloConfig(tpot_ms=250.0, ttft_ms=None)


def result(batch: int, goodput: float, tpot_s: float, violations: tuple[str, ...] = ()) -> CandidateResult:
    performance = performance_result(goodput, slo_violations=violations)
    latency = LatencySummary.of([0.5] * 3, [tpot_s] * 3)
    return candidate_result(
        torch_candidate(batch_size=batch), performance=replace(performance, latency=latency)
    )


def test_requests_given_up_unfinished_are_no_near_miss() -> None:
    """Its TPOT percentile (finished requests only) is far inside the target: the miss is an
    overload, which was re-measured in every finalist round and reported as a near miss."""
    feasible = result(1, 1.0, 0.1)
    given_up = (
        "TPOT p90 unbounded: 9 of 20 requests in the windows were given up unfinished > workload.slo.tpot_ms 250",
    )
    overloaded = result(8, 3.0, 0.1, given_up)
    near = result(16, 3.0, 0.27, ("TPOT p90 270 ms > workload.slo.tpot_ms 250",))
    assert near_misses([feasible, overloaded, near], SLO, 0.25) == [near]


def test_a_crashed_finalist_is_not_blamed_on_the_slo() -> None:
    """The only finalist feasible in the search crashed when re-measured and the near miss missed
    again: the error named workload.slo ("met the SLO once, near its edge") and the reason
    compared the winner with the crash's "interval"."""
    near = result(8, 3.0, 0.27, ("TPOT p90 270 ms > workload.slo.tpot_ms 250",))
    ok = result(1, 1.0, 0.1)
    oom = candidate_result(ok.candidate, status=FAILED, reason="OutOfMemoryError: CUDA out of memory")
    runs = {near.candidate.key(): [near, near], ok.candidate.key(): [oom, oom]}
    selection = select_finalist([near, ok], runs, SLO, 0.1)
    assert not selection.feasible and not selection.all_failed
    assert selection.reason.endswith(f"; {ok.candidate.label()} failed when re-measured")
    error = unreliable_finalists(selection)
    assert error is not None and error.field == "search.finalists"
    assert "every finalist that met the SLO in the search failed when re-measured" in error.problem
    # one that met the SLO in the search and missed it again is still the SLO's edge
    missed = result(1, 1.0, 0.27, ("TPOT p90 270 ms > workload.slo.tpot_ms 250",))
    again = select_finalist([near, ok], {**runs, ok.candidate.key(): [missed, missed]}, SLO, 0.1)
    error = unreliable_finalists(again)
    assert error is not None and error.field == "workload.slo"


def test_the_infeasible_error_raises_only_the_targets_that_are_set() -> None:
    ttft_only = result(1, 1.0, 0.1, ("TTFT p90 900 ms > workload.slo.ttft_ms 500",))
    error = diagnose_infeasible([ttft_only], slo=SloConfig(tpot_ms=None, ttft_ms=500.0))
    assert error.field == "workload.slo" and "raise workload.slo.ttft_ms," in error.fix
    assert "tpot_ms" not in error.fix
    tpot_only = result(1, 1.0, 0.3, ("TPOT p90 300 ms > workload.slo.tpot_ms 250",))
    assert "ttft_ms" not in diagnose_infeasible([tpot_only], slo=SLO).fix
    both = diagnose_infeasible([tpot_only], slo=SloConfig(tpot_ms=250.0, ttft_ms=500.0))
    assert "raise workload.slo.tpot_ms / ttft_ms," in both.fix
