"""The selection reason prints its figures as the report's tables do (sig3: 1234, not 1.23e+03),
and a latency summary with no percentiles claims no headroom."""

from __future__ import annotations

from dataclasses import replace

from optimizer.config import SloConfig
from optimizer.measure.latency import LatencySummary
from optimizer.report.selection import selection_section
from optimizer.results import CandidateResult, sig3
from optimizer.select import latency_headroom, lone_edge_reason, select_finalist

from .test_finalists import SLO, measured


def test_the_reasons_interval_reads_as_the_tables_beside_it() -> None:
    a, b = measured(8, [1234.0]), measured(4, [900.0])
    runs = {
        a.candidate.key(): [measured(8, [1200.0, 1290.0]), measured(8, [1230.0, 1260.0])],
        b.candidate.key(): [measured(4, [900.0, 910.0]), measured(4, [905.0, 915.0])],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    winner, runner_up = selection.finalists
    assert "e+" not in selection.reason
    assert (
        f"{sig3(winner.mean)} goodput tok/J [{sig3(winner.shown_low)}, {sig3(winner.high)}]"
        in selection.reason
    )
    assert f"[{sig3(runner_up.shown_low)}, {sig3(runner_up.high)}]" in selection.reason
    table = "\n".join(selection_section(selection, ""))
    assert f"| {sig3(winner.shown_low)} – {sig3(winner.high)} |" in table


def test_an_infeasible_runner_ups_figure_has_no_e_notation() -> None:
    late = ("TPOT p90 400 ms > 250",)
    a, b = measured(8, [1000.0]), measured(4, [1500.0], tpot_s=0.4, violations=late)
    runs = {
        a.candidate.key(): [measured(8, [1000.0, 1010.0])],
        b.candidate.key(): [measured(4, [1500.0, 1510.0], tpot_s=0.4, violations=late)],
    }
    reason = select_finalist([a, b], runs, SLO, 0.1).reason
    assert reason.endswith(f"; {b.candidate.label()} (1505) missed the SLO when re-measured")


def test_a_lone_candidates_reason_has_no_e_notation() -> None:
    edge = measured(8, [1234.0, 1236.0], tpot_s=0.240)
    reason = lone_edge_reason(edge, SLO, 0.1)
    assert reason is not None and reason.startswith(f"{edge.candidate.label()}: 1235 goodput tok/J")


def _unsummarized(result: CandidateResult) -> CandidateResult:
    """`result` with a latency summary that holds no percentile (no request timed)."""
    assert result.performance is not None
    latency = LatencySummary(requests=0, ttft_ms={}, tpot_ms={})
    return replace(result, performance=replace(result.performance, latency=latency))


def test_an_empty_latency_summary_claims_no_headroom() -> None:
    empty = _unsummarized(measured(8, [10.0]))
    assert latency_headroom(empty, SLO) is None  # not 1 - 0 ms / target: 100%
    assert latency_headroom(empty, SloConfig(tpot_ms=250, ttft_ms=1000)) is None
    # one target's summary empty: the other's margin alone would be a claim on both
    half = replace(
        empty,
        performance=replace(
            empty.performance, latency=replace(empty.performance.latency, ttft_ms={"p90": 100.0})
        ),
    )  # type: ignore[arg-type]
    assert latency_headroom(half, SloConfig(tpot_ms=250, ttft_ms=1000)) is None


def test_an_empty_summary_does_not_win_a_tie_on_headroom() -> None:
    a, b = measured(8, [10.0]), measured(4, [9.9])
    runs = {
        a.candidate.key(): [measured(8, [10.5, 9.5], tpot_s=0.200), measured(8, [10.2, 9.8], tpot_s=0.200)],
        b.candidate.key(): [_unsummarized(measured(4, [9.9, 9.8])), _unsummarized(measured(4, [9.8, 10.0]))],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key(), selection.reason  # its 20% measured, b's unknown
    assert "latency headroom" not in selection.reason
    assert selection.finalists[1].headroom is None
