"""Noise-aware selection: finalists re-measured side by side, intervals, latency headroom."""

from __future__ import annotations

import math
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import SearchConfig, SloConfig
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import Spread
from optimizer.pipeline import unreliable_finalists
from optimizer.results import FAILED, CandidateResult
from optimizer.search.finalists import _round_store, finalist_pool, remeasure
from optimizer.select import interval, select_finalist, t95
from optimizer.store import TrialStore
from optimizer.store.leases import _host

from .factories import candidate_result, performance_result, torch_candidate

SLO = SloConfig(tpot_ms=250)


def measured(
    batch: int, goodputs: list[float], tpot_s: float = 0.1, violations: tuple[str, ...] = ()
) -> CandidateResult:
    base = performance_result(
        goodput_tokens_per_joule=sum(goodputs) / len(goodputs), slo_violations=violations
    )
    windows = [replace(base.windows[0], joules=100.0, goodput_tokens=round(g * 100)) for g in goodputs]
    performance = replace(base, windows=windows, latency=LatencySummary.of([0.5] * 3, [tpot_s] * 3))
    return candidate_result(torch_candidate(batch_size=batch), performance=performance)


def test_interval_is_students_t_on_the_mean() -> None:
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.30 / math.sqrt(3))
    assert interval([5.0])[1:] == (-math.inf, math.inf)
    # past the table (4 finalist rounds of 3 windows: 11 degrees of freedom), not a flat 2.0
    twelve = [float(v % 3) for v in range(12)]
    half = interval(twelve)[2] - interval(twelve)[0]
    assert half == pytest.approx(2.201 * statistics.stdev(twelve) / math.sqrt(12), rel=1e-3)


@pytest.mark.parametrize(("df", "exact"), [(11, 2.2010), (15, 2.1314), (30, 2.0423), (120, 1.9799)])
def test_t95_follows_students_t_past_its_table(df: int, exact: float) -> None:
    assert t95(df) == pytest.approx(exact, abs=1e-3)


def test_a_clear_winner_is_distinguishable() -> None:
    a, b = measured(8, [10.0]), measured(4, [8.0])
    runs = {
        a.candidate.key(): [measured(8, [10.0, 10.2]), measured(8, [9.9, 10.1])],
        b.candidate.key(): [measured(4, [8.0, 8.1]), measured(4, [7.9, 8.0])],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key() and selection.distinguishable
    assert [f.label for f in selection.finalists] == [a.candidate.label(), b.candidate.label()]
    assert selection.finalists[0].headroom == pytest.approx(1 - 100 / 250)


def test_indistinguishable_on_energy_prefers_latency_headroom() -> None:
    a, b = measured(8, [10.0]), measured(4, [9.0])
    runs = {
        a.candidate.key(): [measured(8, [10.5, 9.0], tpot_s=0.240), measured(8, [10.0, 9.5], tpot_s=0.240)],
        b.candidate.key(): [measured(4, [9.5, 9.9], tpot_s=0.150), measured(4, [9.2, 10.0], tpot_s=0.150)],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert not selection.distinguishable
    assert selection.winner == b.candidate.key()  # 40% headroom to a's 4%, the same energy
    assert "40% latency headroom" in selection.reason and "within" not in selection.reason


def test_more_headroom_wins_a_tie_even_far_from_the_slo() -> None:
    """The demo's case: b8 at 39% headroom, b16 at 60%, indistinguishable on energy. A stream near b8's
    capacity queued past its measured TTFT percentile in a later run; b16 had room."""
    a, b = measured(8, [10.0]), measured(16, [9.9])
    runs = {
        a.candidate.key(): [measured(8, [9.8, 9.6], tpot_s=0.150), measured(8, [9.7, 9.7], tpot_s=0.150)],
        b.candidate.key(): [measured(16, [9.5, 9.9], tpot_s=0.100), measured(16, [9.4, 9.8], tpot_s=0.100)],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == b.candidate.key() and not selection.distinguishable
    assert [f.label for f in selection.finalists][0] == b.candidate.label()


def test_headroom_within_a_few_points_leaves_the_tie_to_energy() -> None:
    """42% against 40% headroom is the same headroom run to run: the higher mean stays."""
    a, b = measured(8, [10.0]), measured(16, [9.9])
    runs = {
        a.candidate.key(): [measured(8, [9.8, 9.6], tpot_s=0.150), measured(8, [9.7, 9.7], tpot_s=0.150)],
        b.candidate.key(): [measured(16, [9.5, 9.9], tpot_s=0.145), measured(16, [9.4, 9.8], tpot_s=0.145)],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key() and not selection.distinguishable
    assert "not distinguishable from" in selection.reason and "headroom" not in selection.reason
    assert [f.headroom for f in selection.finalists] == [pytest.approx(0.40), pytest.approx(0.42)]


def test_a_winner_at_the_slos_edge_is_flagged() -> None:
    a, b = measured(8, [10.0]), measured(4, [8.0])
    runs = {
        a.candidate.key(): [measured(8, [10.0, 10.2], tpot_s=0.240), measured(8, [9.9, 10.1], tpot_s=0.240)],
        b.candidate.key(): [measured(4, [8.0, 8.1]), measured(4, [7.9, 8.0])],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key() and selection.distinguishable
    assert selection.reason.endswith("its latency is within 10% of the SLO")


def test_a_finalist_that_missed_the_slo_when_remeasured_cannot_win() -> None:
    a, b = measured(8, [10.0]), measured(4, [8.0])
    runs = {
        a.candidate.key(): [measured(8, [12.0, 12.0], violations=("TPOT p90 300 ms > 250",))],
        b.candidate.key(): [measured(4, [8.0, 8.1])],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == b.candidate.key()
    assert not selection.finalists[1].feasible
    # ahead because the other missed the SLO, not because its interval lies above: said so
    assert selection.reason.endswith(f"; {a.candidate.label()} (12.0) missed the SLO when re-measured")


def test_one_window_each_leaves_no_tie_for_headroom_to_break() -> None:
    """workload.repeats=1 and one finalist round: no interval, so every mean would be inside the
    winner's (-inf, inf) and half its tokens/J could win on latency headroom."""
    a, b = measured(32, [10.0]), measured(1, [5.0])
    runs = {
        a.candidate.key(): [measured(32, [10.0], tpot_s=0.200)],  # 20% headroom
        b.candidate.key(): [measured(1, [5.0], tpot_s=0.050)],  # 80%
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key() and not selection.distinguishable
    assert "10.0 goodput tok/J (no interval from 1 window) re-measured" in selection.reason
    assert "headroom" not in selection.reason


def test_a_finalist_whose_rounds_all_failed_is_said_to_have_failed() -> None:
    a, b = measured(8, [10.0]), measured(16, [9.0])
    failed = candidate_result(torch_candidate(batch_size=16), status=FAILED, reason="out of memory")
    runs = {a.candidate.key(): [measured(8, [10.0, 10.2])], b.candidate.key(): [failed, failed]}
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key()
    assert selection.reason.endswith(f"; {b.candidate.label()} failed when re-measured")
    lost = selection.finalists[1]
    assert lost.samples == [] and not lost.feasible and (lost.low, lost.high) == (-math.inf, math.inf)


class FakeEvaluator:
    workload_cfg = type("W", (), {"slo": SLO})()

    def __init__(self, store: TrialStore | None = None, interrupt_after: int | None = None) -> None:
        self.store = store
        self.order: list[int] = []
        self.interrupt_after = interrupt_after  # Ctrl-C after this many measurements

    def evaluate(self, candidate, role="candidate"):  # type: ignore[no-untyped-def]
        if self.interrupt_after is not None and len(self.order) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.order.append(candidate.batch_size)
        goodputs = [float(candidate.batch_size), float(candidate.batch_size) + 0.1]
        return replace(measured(candidate.batch_size, goodputs), role=role)


def test_remeasure_interleaves_in_alternating_order_and_needs_two_feasible(
    caplog: pytest.LogCaptureFixture,
) -> None:
    evaluator = FakeEvaluator()
    pool = [replace(measured(b, [float(b)]), seconds=b * 10.0) for b in (4, 16, 8, 2)]
    with caplog.at_level("INFO", logger="optimizer.search.finalists"):
        picked = remeasure(evaluator, pool, SearchConfig(finalists=3, finalist_rounds=2))  # type: ignore[arg-type]
    # the time it will take: the three finalists' search times (160 + 80 + 40 s), twice
    assert "in 2 interleaved rounds (~9 min, as long as the search took them)" in caplog.text
    assert picked is not None
    remeasured, selection = picked
    assert evaluator.order == [16, 8, 4, 4, 8, 16]  # the best three, A B C then C B A
    assert len(remeasured) == 6 and selection.winner == torch_candidate(batch_size=16).key()
    assert remeasure(FakeEvaluator(), pool[:1], SearchConfig()) is None  # type: ignore[arg-type]
    assert remeasure(FakeEvaluator(), pool, SearchConfig(finalists=0)) is None  # type: ignore[arg-type]


def test_a_resumed_run_measures_only_the_finalist_rounds_it_lacks(tmp_path: Path) -> None:
    """Each round is kept in the store: Ctrl-C among the finalists loses only the one in flight,
    and it leaves no lease that a later run would count as a death."""
    pool = [measured(b, [float(b)]) for b in (4, 16, 8)]
    search = SearchConfig(finalists=3, finalist_rounds=2)
    stopped = FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx"), interrupt_after=4)
    with pytest.raises(KeyboardInterrupt):
        remeasure(stopped, pool, search)  # type: ignore[arg-type]
    assert stopped.order == [16, 8, 4, 4]
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("select count(*) from wattsmith_claims").fetchone() == (0,)
    resumed = FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx"))
    picked = remeasure(resumed, pool, search)  # type: ignore[arg-type]
    assert resumed.order == [8, 16]  # round 2's C B A, after its A
    assert picked is not None and len(picked[0]) == 6 and {r.role for r in picked[0]} == {"finalist"}
    assert picked[1].winner == torch_candidate(batch_size=16).key()
    other = FakeEvaluator(TrialStore(tmp_path / "t.db", "other context"))
    remeasure(other, pool, search)  # type: ignore[arg-type]
    assert other.order == [16, 8, 4, 4, 8, 16]  # another run's conditions: nothing to reuse


def test_a_finalist_that_killed_its_process_twice_fails_its_round(tmp_path: Path) -> None:
    """As in the search: a finalist that crashed the process on two attempts at a round is failed
    there (and cannot win) instead of ending every resumed run at the finalists."""
    pool = [measured(b, [float(b)]) for b in (16, 8, 4)]
    store = TrialStore(tmp_path / "t.db", "ctx")
    rounds = _round_store(store, pool, 0)
    assert rounds is not None
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    crasher = pool[0].candidate
    for _ in range(2):  # a process that died holding the round's lease, taken over by the next
        assert TrialStore(tmp_path / "t.db", rounds.context, worker=f"{_host()}:{gone.pid}:x").claim(
            crasher.key(), 3600
        )
        assert rounds.claim(crasher.key(), 60)
        rounds.release(crasher.key())
    evaluator = FakeEvaluator(store)
    picked = remeasure(evaluator, pool, SearchConfig(finalists=3, finalist_rounds=2))  # type: ignore[arg-type]
    # its first round is not measured a third time, nor its second round at all: failed once, it
    # cannot be selected (that takes every round), and another round would cost two more deaths
    assert evaluator.order == [8, 4, 4, 8]
    assert picked is not None
    remeasured, selection = picked
    [failed] = [r for r in remeasured if r.status == FAILED]  # measured once: one row
    assert failed.candidate == crasher and "2 processes died" in (failed.reason or "")
    assert selection.winner == pool[1].candidate.key()


def test_when_no_finalist_stays_feasible_the_selection_still_answers() -> None:
    a, b = measured(8, [10.0]), measured(4, [8.0])
    late = ("TPOT p90 300 ms > 250",)
    runs = {
        a.candidate.key(): [measured(8, [10.0, 10.1], violations=late)],
        b.candidate.key(): [measured(4, [8.0, 8.1], violations=late)],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.winner == a.candidate.key()
    assert not any(f.feasible for f in selection.finalists)
    # the ranking stays for the report, but nothing is ahead and nothing is selected
    assert not selection.feasible and not selection.distinguishable
    assert selection.reason.startswith("no finalist met the SLO in every re-measurement; the best, ")
    error = unreliable_finalists(selection)
    assert error is not None and error.field == "workload.slo" and "lower workload.rate" in error.fix
    # a trace is replayed at its own times: workload.rate changes nothing
    traced = unreliable_finalists(selection, trace=True)
    assert traced is not None and "replay a slower trace" in traced.fix and "workload.rate" not in traced.fix
    assert (
        unreliable_finalists(select_finalist([a, b], {k: [measured(4, [8.0, 8.1])] for k in runs}, SLO, 0.1))
        is None
    )


def test_when_every_finalist_failed_the_error_names_the_failure_not_the_slo() -> None:
    a, b = measured(8, [10.0]), measured(4, [8.0])
    oom = candidate_result(a.candidate, status=FAILED, reason="OutOfMemoryError: CUDA out of memory")
    runs = {a.candidate.key(): [oom, oom], b.candidate.key(): [replace(oom, candidate=b.candidate)] * 2}
    selection = select_finalist([a, b], runs, SLO, 0.1)
    assert selection.all_failed and not selection.feasible
    assert (
        selection.reason
        == "every finalist failed when re-measured (first: OutOfMemoryError: CUDA out of memory)"
    )
    error = unreliable_finalists(selection)
    assert error is not None and error.field == "search.finalists" and "SLO" not in str(error)


def test_headroom_is_read_at_the_slos_own_percentile() -> None:
    from optimizer.select import latency_headroom

    tpots = [0.010] * 90 + [0.095] * 10  # p90 10 ms, p95 95 ms
    slo = SloConfig(tpot_ms=100, ttft_ms=None, percentile=95)
    result = measured(8, [10.0])
    at_p95 = replace(result.performance, latency=LatencySummary.of([0.1] * 100, tpots, slo.percentile))
    assert latency_headroom(replace(result, performance=at_p95), slo) == pytest.approx(0.05, abs=0.01)
    # a summary stored without p95 is read at p99, never at the optimistic p90
    older = replace(result.performance, latency=LatencySummary.of([0.1] * 100, tpots))
    assert "p95" not in older.latency.tpot_ms
    assert latency_headroom(replace(result, performance=older), slo) == pytest.approx(0.05, abs=0.01)


def test_the_winners_evidence_is_every_round_it_was_selected_on() -> None:
    from optimizer.search.finalists import merged

    rounds = [measured(8, [10.0, 12.0]), measured(8, [8.0, 10.0])]
    one = merged(rounds)
    assert one.performance is not None
    assert len(one.performance.windows) == 4
    assert one.performance.goodput_tokens_per_joule.mean == pytest.approx(10.0)  # not the last round's 9
    selection = select_finalist(
        [rounds[0], measured(4, [1.0])],
        {rounds[0].candidate.key(): rounds, measured(4, [1.0]).candidate.key(): [measured(4, [1.0, 1.0])]},
        SLO,
        0.1,
    )
    assert one.performance.goodput_tokens_per_joule.mean == pytest.approx(selection.finalists[0].mean)
    assert merged(rounds[:1]) is rounds[0]
    # a violation seen in any round stays with the finalist, even when the last round met the SLO
    late = ("TPOT p90 300 ms > 250",)
    flaky = merged([measured(8, [10.0], violations=late), measured(8, [9.0])])
    assert flaky.performance is not None and flaky.performance.slo_violations == list(late)


LATE = ("TPOT p90 270 ms > workload.slo.tpot_ms 250",)


def test_a_near_miss_with_more_tokens_per_joule_joins_the_finalists() -> None:
    """The demo's case of 2026-12-06: llama.cpp at 9.48 goodput tok/J missed TTFT p90 by 19% in the
    search, and the finalists were two torch-cb candidates at 7.1 and 6.9 tok/J: one noisy
    percentile decided against the most efficient candidate unmeasured again."""
    near = measured(16, [9.5], tpot_s=0.270, violations=LATE)  # 8% over the target
    far = measured(32, [12.0], tpot_s=0.400, violations=("TPOT p90 400 ms > 250",))  # 60% over
    below = measured(2, [5.0], tpot_s=0.260, violations=LATE)  # near, but less goodput than a feasible one
    feasible_ones = [measured(b, [float(b)]) for b in (7, 6, 5)]
    search = SearchConfig(finalists=3)
    pool = finalist_pool([*feasible_ones, near, far, below], search, SLO)
    assert [r.candidate.batch_size for r in pool] == [16, 7, 6]
    assert (
        finalist_pool([*feasible_ones, near], SearchConfig(finalists=3, near_miss=None), SLO) == feasible_ones
    )
    # a static batch 8% over its TPOT target has no goodput at all: what it is worth if it meets
    # the SLO when measured again is its tokens/J, every token counted
    offline = measured(12, [0.0], tpot_s=0.270, violations=LATE)
    assert offline.objective == 0.0 and offline.performance is not None
    offline = replace(offline, performance=replace(offline.performance, tokens_per_joule=Spread.of([12.0])))
    assert [r.candidate.batch_size for r in finalist_pool([*feasible_ones, offline], search, SLO)] == [
        12,
        7,
        6,
    ]
    # the threshold is the overshoot: 8% over is outside near_miss=0.05
    assert [
        r.candidate.batch_size
        for r in finalist_pool([*feasible_ones, near], SearchConfig(near_miss=0.05), SLO)
    ] == [7, 6, 5]
    # the best feasible candidate always keeps its place, and a near miss alone is no finalist
    two_near = [near, measured(24, [11.0], tpot_s=0.270, violations=LATE)]
    assert [
        r.candidate.batch_size
        for r in finalist_pool([*feasible_ones, *two_near], SearchConfig(finalists=2), SLO)
    ] == [24, 7]
    # with nothing feasible, the near misses take every place, the most tokens/J first
    assert finalist_pool([near, far], search, SLO) == [near]
    assert finalist_pool([*two_near, far], search, SLO) == [two_near[1], near]
    assert finalist_pool([*two_near, far], SearchConfig(finalists=3, near_miss=None), SLO) == []


def test_a_near_miss_wins_only_by_meeting_the_slo_in_every_re_measurement() -> None:
    near, ok = measured(16, [9.5], tpot_s=0.270, violations=LATE), measured(8, [7.0])
    met = {
        near.candidate.key(): [
            measured(16, [9.4, 9.6], tpot_s=0.200),
            measured(16, [9.5, 9.7], tpot_s=0.210),
        ],
        ok.candidate.key(): [measured(8, [7.0, 7.1]), measured(8, [6.9, 7.2])],
    }
    selection = select_finalist([near, ok], met, SLO, 0.1)
    assert selection.winner == near.candidate.key() and selection.feasible
    assert [f.near_miss for f in selection.finalists] == [True, False]
    assert "missed the SLO in the search's run and met it in every re-measurement" in selection.reason
    missed_again = {
        **met,
        near.candidate.key(): [
            measured(16, [9.4, 9.6], tpot_s=0.200),
            measured(16, [9.5], tpot_s=0.270, violations=LATE),
        ],
    }
    selection = select_finalist([near, ok], missed_again, SLO, 0.1)
    assert selection.winner == ok.candidate.key() and selection.feasible
    assert "missed the SLO when re-measured" in selection.reason


def test_remeasure_takes_the_near_miss_into_its_rounds() -> None:
    evaluator = FakeEvaluator()  # re-measures every candidate inside the SLO
    pool = [measured(b, [float(b)]) for b in (4, 8)] + [measured(16, [16.0], tpot_s=0.270, violations=LATE)]
    picked = remeasure(evaluator, pool, SearchConfig(finalists=3, finalist_rounds=1))  # type: ignore[arg-type]
    assert evaluator.order == [16, 8, 4]
    assert picked is not None and picked[1].winner == torch_candidate(batch_size=16).key()
    assert picked[1].finalists[0].near_miss
    # one feasible candidate and a near miss are two finalists
    assert remeasure(FakeEvaluator(), pool[1:], SearchConfig()) is not None  # type: ignore[arg-type]


def test_with_nothing_feasible_a_lone_near_miss_is_re_measured_and_can_be_selected() -> None:
    """A run whose every candidate missed the SLO, one of them by a few percent, ended with no recipe
    on one noisy percentile; it is measured again, and selected if it meets the SLO every time."""
    near = measured(16, [16.0], tpot_s=0.270, violations=LATE)
    far = measured(32, [20.0], tpot_s=0.400, violations=("TPOT p90 400 ms > 250",))
    evaluator = FakeEvaluator()  # re-measures every candidate inside the SLO
    picked = remeasure(evaluator, [near, far], SearchConfig(finalists=3, finalist_rounds=2))  # type: ignore[arg-type]
    assert evaluator.order == [16, 16]  # the near miss in both rounds; the far miss not at all
    assert picked is not None
    remeasured, selection = picked
    assert len(remeasured) == 2 and all(r.role == "finalist" for r in remeasured)
    assert selection.winner == near.candidate.key() and selection.feasible
    assert [f.near_miss for f in selection.finalists] == [True] and not selection.distinguishable
    assert selection.reason == (
        f"{near.candidate.label()}: 16.1 goodput tok/J [16.0, 16.1] re-measured, the only finalist"
        "; it missed the SLO in the search's run and met it in every re-measurement"
    )
    # a lone feasible candidate has nothing to be compared with, and is not measured again
    assert remeasure(FakeEvaluator(), [measured(8, [8.0]), far], SearchConfig()) is None  # type: ignore[arg-type]
    # search.finalists < 2 keeps the search's figures, near misses or not
    assert remeasure(FakeEvaluator(), [near], SearchConfig(finalists=1)) is None  # type: ignore[arg-type]


def test_near_misses_that_miss_again_leave_the_diagnosis_to_the_constraint() -> None:
    near = measured(16, [16.0], tpot_s=0.270, violations=LATE)
    again = {near.candidate.key(): [measured(16, [15.0, 15.5], tpot_s=0.280, violations=LATE)]}
    selection = select_finalist([near], again, SLO, 0.1)
    assert not selection.feasible and not selection.distinguishable
    assert selection.reason.startswith("no finalist met the SLO in every re-measurement; the best, ")
    assert selection.reason.endswith(", the only finalist")
    # not "the search's runs met the SLO once": they never did; diagnose_infeasible names the SLO
    assert unreliable_finalists(selection) is None


def test_the_report_says_when_the_finalists_are_near_misses_alone() -> None:
    from optimizer.report.selection import selection_section

    near = measured(16, [16.0], tpot_s=0.270, violations=LATE)
    met = {near.candidate.key(): [measured(16, [15.0, 15.5], tpot_s=0.200)]}
    text = "\n".join(selection_section(select_finalist([near], met, SLO, 0.1), ""))
    assert "No candidate met the latency SLO in the search" in text
    assert f"| {near.candidate.label()} (near miss) | 15.2 |" in text
    assert "The only finalist: " in text and "runner-up" not in text
    ok = measured(8, [7.0])
    both = {**met, ok.candidate.key(): [measured(8, [7.0, 7.1])]}
    text = "\n".join(selection_section(select_finalist([near, ok], both, SLO, 0.1), ""))
    assert "The search's best feasible candidates" in text and "The winner is distinguishable from" in text
    late = {near.candidate.key(): [measured(16, [15.0, 15.5], tpot_s=0.280, violations=LATE)]}
    text = "\n".join(selection_section(select_finalist([near], late, SLO, 0.1), ""))
    assert "Nothing selected: no finalist met the SLO in every re-measurement; the best, " in text


def test_an_interval_below_zero_is_shown_from_zero() -> None:
    """Few, spread windows (goodput swings when requests sit at the SLO's edge) give a t interval
    reaching below 0 tok/J, which no candidate can have: the reason, the recipe's evidence and the
    report show it from 0; selection compares the interval as computed."""
    from optimizer.recipe import _selection_evidence
    from optimizer.report.selection import selection_section

    a, b = measured(8, [1.0]), measured(4, [0.8])
    runs = {
        a.candidate.key(): [measured(8, [2.0, 0.1]), measured(8, [1.9, 0.2])],
        b.candidate.key(): [measured(4, [0.8, 0.7]), measured(4, [0.9, 0.8])],
    }
    selection = select_finalist([a, b], runs, SLO, 0.1)
    winner = selection.finalists[0]
    assert winner.key == a.candidate.key() and winner.low == pytest.approx(-0.605, abs=1e-3)
    assert "[0, 2.70]" in selection.reason and "-0." not in selection.reason
    assert _selection_evidence(selection)["finalists"][0]["goodput_tokens_per_joule"]["ci95"] == [0.0, 2.7049]
    row = next(line for line in selection_section(selection, "") if line.startswith(f"| {winner.label} "))
    assert "| 0 – 2.70 |" in row
