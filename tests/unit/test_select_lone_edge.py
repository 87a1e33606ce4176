"""A candidate selected without finalists (the only feasible one, or search.finalists < 2) is
flagged at the SLO's edge as a finalist winner is: `remeasure` gives no Selection to carry it."""

from __future__ import annotations

from optimizer.config import SearchConfig, SloConfig
from optimizer.report.selection import selection_section
from optimizer.search.finalists import remeasure
from optimizer.select import lone_edge_reason, select_best, select_finalist
from unit.test_finalists import SLO, measured

FLAG = "its latency is within 10% of the SLO"


class NeverMeasures:
    workload_cfg = type("W", (), {"slo": SLO})()
    store = None

    def evaluate(self, candidate, role="candidate"):  # type: ignore[no-untyped-def]
        raise AssertionError("a lone feasible candidate is not re-measured")


def test_a_lone_feasible_candidate_at_the_edge_is_flagged_as_a_finalist_winner_is() -> None:
    edge = measured(8, [10.0, 10.2], tpot_s=0.240)  # 4% headroom, inside search.slo_margin 10%
    far = measured(32, [20.0], tpot_s=0.400, violations=("TPOT p90 400 ms > 250",))
    # nothing is re-measured (no Selection, no reason from select_finalist): the flag comes from here
    assert remeasure(NeverMeasures(), [edge, far], SearchConfig(slo_margin=0.1)) is None  # type: ignore[arg-type]
    best = select_best([edge, far])
    assert best is edge
    reason = lone_edge_reason(best, SLO, 0.1)
    assert (
        reason == f"{edge.candidate.label()}: 10.1 goodput tok/J in the search's run, not re-measured; {FLAG}"
    )
    # the same words as a finalist winner's flag
    other = measured(4, [5.0], tpot_s=0.1)
    runs = {edge.candidate.key(): [edge], other.candidate.key(): [other]}
    assert select_finalist([edge, other], runs, SLO, 0.1).reason.endswith(f"; {FLAG}")


def test_search_finalists_below_two_flags_the_searchs_best_at_the_edge() -> None:
    edge, other = measured(8, [10.0], tpot_s=0.240), measured(4, [5.0], tpot_s=0.1)
    assert remeasure(NeverMeasures(), [edge, other], SearchConfig(finalists=1)) is None  # type: ignore[arg-type]
    reason = lone_edge_reason(edge, SLO, 0.1)
    assert reason is not None and reason.endswith(f"; {FLAG}")


def test_no_flag_away_from_the_edge_past_it_or_without_a_target() -> None:
    assert lone_edge_reason(measured(8, [10.0], tpot_s=0.200), SLO, 0.1) is None  # 20% headroom
    assert lone_edge_reason(measured(8, [10.0], tpot_s=0.220), SLO, 0.1) is None  # 12%: outside
    late = measured(8, [10.0], tpot_s=0.260, violations=("TPOT p90 260 ms > 250",))
    assert lone_edge_reason(late, SLO, 0.1) is None  # infeasible: past the edge, not selected
    assert lone_edge_reason(measured(8, [10.0], tpot_s=0.240), SloConfig(tpot_ms=None), 0.1) is None
    assert lone_edge_reason(measured(8, [10.0], tpot_s=0.240), SLO, 0.0) is None  # slo_margin 0: never


def test_the_report_shows_a_lone_candidates_edge_flag() -> None:
    edge = measured(8, [10.0, 10.2], tpot_s=0.240)
    lines = selection_section(None, "", lone_edge_reason(edge, SLO, 0.1))
    text = "\n".join(lines)
    assert lines[0] == "## Selection" and "among finalists" not in text
    assert (
        f"{edge.candidate.label()}: 10.1 goodput tok/J in the search's run, not re-measured; {FLAG}." in text
    )
    assert selection_section(None, "") == []  # not at the edge: nothing to say, as before
    assert selection_section(None, "*", lone_edge_reason(edge, SLO, 0.1))[2].startswith(
        "*No finalists were compared"
    )
