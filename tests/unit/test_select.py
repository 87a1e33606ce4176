"""Selection: the best feasible candidate and the goodput-vs-KL Pareto front."""

from __future__ import annotations

import pytest

from optimizer.results import FAILED, REJECTED
from optimizer.select import feasible, pareto_front, select_best


@pytest.fixture
def m(make_result, make_candidate, make_quality, make_performance):
    """A measured result: batch size (its identity here), goodput tok/J, KL, SLO met, tok/s."""

    def measured(batch_size, tpj, kl, slo_ok=True, tps=10.0):
        return make_result(
            candidate=make_candidate(batch_size=batch_size),
            quality=make_quality(mean_kl=kl),
            performance=make_performance(
                goodput_tokens_per_joule=tpj, tokens_per_second=tps, slo_violations=[] if slo_ok else ["slow"]
            ),
        )

    return measured


def test_select_best_picks_the_best_feasible_not_the_first(m) -> None:
    results = [m(1, 1.0, 0.0), m(2, 3.0, 0.0), m(4, 2.0, 0.0)]
    assert select_best(results).candidate.batch_size == 2


def test_infeasible_is_never_selected(m, make_result, make_candidate, make_performance) -> None:
    results = [
        m(1, 1.0, 0.0),
        m(64, 50.0, 0.0, slo_ok=False),  # most tokens/J, but misses the SLO
        make_result(
            candidate=make_candidate(batch_size=8), status=REJECTED, performance=make_performance(99.0)
        ),
        make_result(candidate=make_candidate(batch_size=16), status=FAILED, reason="oom"),
    ]
    assert [r.candidate.batch_size for r in feasible(results)] == [1]
    assert select_best(results).candidate.batch_size == 1


def test_nothing_feasible_selects_nothing(m) -> None:
    assert select_best([m(1, 5.0, 0.0, slo_ok=False)]) is None
    assert select_best([]) is None


def test_ties_go_to_higher_throughput(m) -> None:
    results = [m(1, 2.0, 0.0, tps=5.0), m(2, 2.0, 0.0, tps=9.0), m(4, 2.0, 0.0, tps=7.0)]
    assert select_best(results).candidate.batch_size == 2


def test_pareto_front_on_a_hand_made_set(m, make_result, make_candidate, make_quality) -> None:
    results = [
        m(1, 1.0, 0.000),  # front: lowest KL
        m(2, 2.0, 0.010),  # front
        m(3, 1.5, 0.020),  # dominated by b2 (less tok/J, more KL)
        m(4, 4.0, 0.030),  # front
        m(5, 4.0, 0.040),  # dominated by b4 (same tok/J, more KL)
        m(6, 9.0, 0.001, slo_ok=False),  # would dominate all, but misses the SLO
        make_result(
            candidate=make_candidate(batch_size=7), status=REJECTED, quality=make_quality(mean_kl=0.5)
        ),
    ]
    front = pareto_front(results)
    assert [r.candidate.batch_size for r in front] == [1, 2, 4]  # sorted by KL


def test_pareto_front_keeps_exact_ties(m) -> None:
    front = pareto_front([m(1, 2.0, 0.01), m(2, 2.0, 0.01)])
    assert sorted(r.candidate.batch_size for r in front) == [1, 2]


def test_pareto_front_skips_results_without_quality(make_result, make_candidate, make_performance) -> None:
    assert pareto_front([make_result(performance=make_performance(), quality=None)]) == []
