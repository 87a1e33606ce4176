"""run_search: baseline first, reuse from the store, budgets, failures."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import FAILED, MEASURED, PRUNED, REJECTED
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

BOUND = QualityConfig()


class FakeEvaluator:
    """Measures every candidate instantly; remembers what it was asked."""

    def __init__(self, store, make_result, make_quality, make_performance, status=MEASURED) -> None:
        self.store = store
        self.asked: list = []
        self.thresholds: list = []
        self._make = lambda cand, role: make_result(
            candidate=cand,
            status=status,
            reason=None if status == MEASURED else "broken",
            role=role,
            quality=make_quality(mean_kl=0.001) if status != FAILED else None,
            performance=make_performance(goodput_tokens_per_joule=cand.batch_size)
            if status == MEASURED
            else None,
            seconds=0.01,
        )

    def evaluate(self, candidate, role="candidate", stop_below=None):
        self.asked.append((candidate, role))
        self.thresholds.append(stop_below)
        return self._make(candidate, role)


@pytest.fixture
def evaluator(tmp_path: Path, make_result, make_quality, make_performance):
    def make(store_path: Path | None = None, status=MEASURED) -> FakeEvaluator:
        store = TrialStore(store_path or tmp_path / "trials.db", "ctx")
        return FakeEvaluator(store, make_result, make_quality, make_performance, status)

    return make


def test_baseline_first_then_the_candidates(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    ev = evaluator()
    lines: list[str] = []
    outcome = run_search(cands, [], cands[0], ev, SearchConfig(), BOUND, progress=lines.append)
    assert ev.asked[0] == (cands[0], "baseline")
    assert [c for c, _ in ev.asked] == cands  # the baseline is not measured twice
    assert outcome.baseline_in_space
    assert outcome.baseline.role == "baseline"
    assert [r.candidate for r in outcome.selectable] == cands
    assert len(lines) == 3 and lines[0].startswith("[1/3]")
    assert outcome.not_reached == []


def test_a_baseline_outside_the_space_is_not_selectable(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (2, 4)]
    base = make_candidate(batch_size=1)
    outcome = run_search(cands, [], base, evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    assert not outcome.baseline_in_space
    assert base not in [r.candidate for r in outcome.selectable]
    assert base in [r.candidate for r in outcome.results]


def test_pruned_candidates_become_results(evaluator, make_candidate) -> None:
    pruned = [(make_candidate(batch_size=512), "needs ~99 GiB")]
    outcome = run_search(
        [make_candidate()],
        pruned,
        make_candidate(),
        evaluator(),
        SearchConfig(),
        BOUND,
        progress=lambda _: None,
    )
    (p,) = [r for r in outcome.results if r.status == PRUNED]
    assert p.reason == "needs ~99 GiB"


def test_stored_results_are_reused(evaluator, make_candidate, tmp_path: Path) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(cands, [], cands[0], evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    again = evaluator()  # a new store instance on the same file: a resumed search
    outcome = run_search(cands, [], cands[0], again, SearchConfig(), BOUND, progress=lambda _: None)
    assert again.asked == []
    assert all(r.reused for r in outcome.results)
    assert outcome.measuring_seconds == 0.0
    with sqlite3.connect(tmp_path / "trials.db") as connection:
        assert connection.execute("SELECT count(*) FROM wattsmith_trials").fetchone()[0] == 2


def test_failed_results_are_retried_only_when_asked(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(cands, [], cands[0], evaluator(status=FAILED), SearchConfig(), BOUND, progress=lambda _: None)
    kept = evaluator()
    outcome = run_search(cands, [], cands[0], kept, SearchConfig(), BOUND, progress=lambda _: None)
    assert kept.asked == [] and all(r.status == FAILED for r in outcome.results)
    retry = evaluator()
    outcome = run_search(
        cands, [], cands[0], retry, SearchConfig(retry_failed=True), BOUND, progress=lambda _: None
    )
    assert len(retry.asked) == 2 and all(r.status == MEASURED for r in outcome.results)


def test_rejected_under_a_looser_bound_is_measured_again(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2)]
    run_search(
        cands, [], cands[0], evaluator(status=REJECTED), SearchConfig(), BOUND, progress=lambda _: None
    )
    ev = evaluator()
    # the stored quality (KL 0.001) passes the bound now but has no energy numbers
    outcome = run_search(cands, [], cands[0], ev, SearchConfig(), BOUND, progress=lambda _: None)
    assert len(ev.asked) == 2
    assert all(r.status == MEASURED and not r.reused for r in outcome.results)


def test_max_candidates_cuts_the_search(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(max_candidates=2), BOUND, progress=lambda _: None
    )
    assert len(ev.asked) == 2  # the baseline counts
    assert outcome.not_reached == cands[2:]


def test_stored_candidates_are_used_even_past_the_budget(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    run_search(cands, [], cands[0], evaluator(), SearchConfig(), BOUND, progress=lambda _: None)
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(budget_minutes=1e-9), BOUND, progress=lambda _: None
    )
    assert ev.asked == [] and outcome.not_reached == []
    assert len(outcome.results) == 3


def test_time_budget_leaves_new_candidates_unmeasured(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(budget_minutes=1e-9), BOUND, progress=lambda _: None
    )
    assert [c for c, _ in ev.asked] == [cands[0]]  # the baseline is always measured
    assert outcome.not_reached == cands[1:]


class CeilingRoofline:
    """A stand-in roofline: every candidate's ceiling is its batch size x 10 tokens/J."""

    def __init__(self) -> None:
        from optimizer.search.roofline import RooflineRates

        self.rates = RooflineRates(1.0, 1.0, 1.0, 0, source="stand-in")

    def prune_reason(self, candidate, best):
        ceiling = candidate.batch_size * 10.0
        if best is not None and ceiling < best.objective:
            return f"roofline: <= {ceiling:g} tok/J < {best.objective:g}"
        return None


def test_candidates_that_cannot_beat_the_best_are_pruned_unbuilt(evaluator, make_candidate) -> None:
    # the fake measures tokens/J = batch size: batch 64 measures 64 > ceilings of batch 1..4 (10..40)
    cands = [make_candidate(batch_size=b) for b in (64, 1, 2, 4, 8)]
    ev = evaluator()
    lines: list[str] = []
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(), BOUND, progress=lines.append, roofline=CeilingRoofline()
    )
    assert [c.batch_size for c, _ in ev.asked] == [64, 8]  # 8 may reach 80 > 64: measured
    pruned = {r.candidate.batch_size: r.reason for r in outcome.results if r.status == PRUNED}
    assert set(pruned) == {1, 2, 4}
    assert all(reason.startswith("roofline") for reason in pruned.values())
    assert outcome.roofline is not None and "stand-in" in outcome.roofline
    assert outcome.workers is not None and outcome.workers[0].pruned_by_roofline == 3
    assert any("PRUNED: roofline" in line for line in lines)
    assert ev.store.run_count() == 2  # pruned candidates are decisions, not stored measurements


def test_not_reached_candidates_the_roofline_rules_out_count_as_pruned(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (64, 1, 128)]
    outcome = run_search(
        cands,
        [],
        cands[0],
        evaluator(),
        SearchConfig(max_candidates=1),
        BOUND,
        progress=lambda _: None,
        roofline=CeilingRoofline(),
    )
    assert [r.status for r in outcome.results] == [MEASURED, PRUNED]  # batch 1: 10 < 64
    assert outcome.not_reached == [cands[2]]  # batch 128 might win: not reached, not pruned


def test_optuna_sampler_in_the_loop(evaluator, make_candidate) -> None:
    cands = [make_candidate(batch_size=b, precision=p) for p in ("fp32", "bf16") for b in (1, 2, 4, 8)]
    ev = evaluator()
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(sampler="optuna"), BOUND, progress=lambda _: None
    )
    assert sorted(c.key() for c, _ in ev.asked) == sorted(c.key() for c in cands)  # each once
    assert outcome.not_reached == []
    # a second run reuses everything and the sampler asks for nothing new
    again = evaluator()
    second = run_search(
        cands, [], cands[0], again, SearchConfig(sampler="optuna"), BOUND, progress=lambda _: None
    )
    assert again.asked == [] and all(r.reused for r in second.results)


def test_free_rejections_do_not_use_the_candidate_budget(
    evaluator, make_candidate, make_result, make_quality
) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    ev = evaluator()
    free = make_result(candidate=cands[1], status=REJECTED, quality=make_quality(mean_kl=0.9), seconds=0.0)
    ev.store.append(free)  # as a cached-quality rejection of this run would be stored
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(max_candidates=2), BOUND, progress=lambda _: None
    )
    # the baseline and batch 4 fill the budget of two: the free rejection of batch 2 took no slot
    assert [c for c, _ in ev.asked] == [cands[0], cands[2]]
    assert outcome.not_reached == []


def test_a_candidate_that_would_run_past_the_budget_is_not_started(evaluator, make_candidate) -> None:
    # each evaluation takes 10 s on a simulated clock; the budget is 25 s
    now = [0.0]
    ev = evaluator()
    plain = ev.evaluate

    def timed(candidate, role="candidate", stop_below=None):
        now[0] += 10.0
        return replace(plain(candidate, role), seconds=10.0)

    ev.evaluate = timed
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    outcome = run_search(
        cands,
        [],
        cands[0],
        ev,
        SearchConfig(budget_minutes=25 / 60),
        BOUND,
        progress=lambda _: None,
        clock=lambda: now[0],
    )
    assert len(ev.asked) == 2  # at 20 s, 5 s are left and a measurement takes 10 s: stop
    assert outcome.measuring_seconds == 20.0
    assert outcome.not_reached == cands[2:]


def test_each_candidate_is_screened_against_the_best_so_far(
    evaluator, make_candidate, tmp_path: Path
) -> None:
    """stop_below is the best goodput so far / (1 + screen_margin); none for the baseline or the first."""
    ev = evaluator()
    candidates = [make_candidate(batch_size=b) for b in (1, 4, 2)]
    run_search(candidates, [], candidates[0], ev, SearchConfig(screen_margin=0.25), BOUND)
    assert ev.thresholds == [None, pytest.approx(1 / 1.25), pytest.approx(4 / 1.25)]
    off = evaluator(tmp_path / "unscreened.db")
    run_search(candidates, [], candidates[0], off, SearchConfig(screen_margin=None), BOUND)
    assert off.thresholds == [None, None, None]


def test_patience_stops_after_a_run_of_candidates_that_do_not_beat_the_best(
    evaluator, make_candidate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.search import runner as runner_module
    from optimizer.search.samplers import GridSampler

    class InOrder(GridSampler):  # an ordered sampler that is not a grid (a grid ignores patience)
        pass

    monkeypatch.setattr(runner_module, "make_sampler", lambda cfg, candidates, *_: InOrder(candidates))
    ev = evaluator()
    # the fake's goodput is the batch size: 64 first, then five that lose
    candidates = [make_candidate(batch_size=b) for b in (64, 1, 2, 4, 8, 16)]
    outcome = run_search(candidates, [], candidates[0], ev, SearchConfig(patience=3), BOUND)
    assert [c.batch_size for c, _ in ev.asked] == [64, 1, 2, 4]
    assert len(outcome.not_reached) == 2


def test_a_grid_ignores_patience(evaluator, make_candidate) -> None:
    ev = evaluator()
    candidates = [make_candidate(batch_size=b) for b in (64, 1, 2, 4, 8, 16)]
    run_search(candidates, [], candidates[0], ev, SearchConfig(sampler="grid", patience=1), BOUND)
    assert len(ev.asked) == 6


@pytest.mark.parametrize(
    "search,after_first",
    [
        (SearchConfig(), "~4 min"),  # four candidates left at 60 s each
        (SearchConfig(workers=2), "~2 min"),  # shared by two workers
        (SearchConfig(max_candidates=3), "~2 min"),  # the cap leaves two more evaluations
        (SearchConfig(budget_minutes=1.25), "~75 s"),  # the budget's end comes first
    ],
)
def test_progress_says_how_long_the_search_can_still_take(
    evaluator, make_candidate, search: SearchConfig, after_first: str
) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4, 8, 16)]
    ev = evaluator()
    measure = ev.evaluate
    ev.evaluate = lambda c, role="candidate", stop_below=None: replace(
        measure(c, role, stop_below), seconds=60.0
    )
    lines: list[str] = []
    run_search(cands, [], cands[0], ev, search, BOUND, progress=lines.append, clock=lambda: 0.0)
    assert lines[0].endswith(f"(60 s); search: {after_first} left (estimate)")
    assert "left" not in lines[-1]  # nothing is left after the last


def in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidates in the given order, by a sampler that is not a grid (a grid ignores patience)."""
    from optimizer.search import runner as runner_module
    from optimizer.search.samplers import GridSampler

    class InOrder(GridSampler):
        pass

    monkeypatch.setattr(runner_module, "make_sampler", lambda cfg, candidates, *_: InOrder(candidates))


def test_patience_counts_only_candidates_that_meet_the_slo(
    evaluator, make_candidate, make_performance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Best-bound order puts the large batches first, and those miss the SLO: a result that is not
    feasible says nothing about the order finding winners, so it neither counts nor resets."""
    in_order(monkeypatch)
    ev = evaluator()
    measure = ev.evaluate

    def large_batches_miss_the_slo(candidate, role="candidate", stop_below=None):
        result = measure(candidate, role, stop_below)
        if candidate.batch_size < 16:
            return result
        late = make_performance(goodput_tokens_per_joule=candidate.batch_size, slo_violations=["TPOT"])
        return replace(result, performance=late)

    ev.evaluate = large_batches_miss_the_slo
    candidates = [make_candidate(batch_size=b) for b in (64, 32, 16, 8, 1, 48, 2, 4)]
    outcome = run_search(
        candidates, [], candidates[0], ev, SearchConfig(patience=2), BOUND, progress=lambda _: None
    )
    # 8 is the first feasible best; 1 and 2 lose (48 between them misses the SLO): stop
    assert [c.batch_size for c, _ in ev.asked] == [64, 32, 16, 8, 1, 48, 2]
    assert outcome.not_reached == [candidates[-1]]


def test_a_rerun_picks_patience_up_where_the_stored_results_leave_it(
    evaluator, make_candidate, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_order(monkeypatch)
    candidates = [make_candidate(batch_size=b) for b in (64, 1, 2, 4, 8, 16)]
    first = evaluator()
    run_search(candidates, [], candidates[0], first, SearchConfig(patience=2), BOUND, progress=lambda _: None)
    assert [c.batch_size for c, _ in first.asked] == [64, 1, 2]
    again = evaluator()  # the same search again: its patience ran out already
    outcome = run_search(
        candidates, [], candidates[0], again, SearchConfig(patience=2), BOUND, progress=lambda _: None
    )
    assert again.asked == [] and outcome.not_reached == candidates[3:]
    longer = evaluator()  # one more loser allowed: one more measured
    run_search(
        candidates, [], candidates[0], longer, SearchConfig(patience=3), BOUND, progress=lambda _: None
    )
    assert [c.batch_size for c, _ in longer.asked] == [4]


def test_the_candidate_cap_counts_what_other_workers_are_measuring(
    evaluator, make_candidate, tmp_path: Path
) -> None:
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    ev = evaluator()
    other = TrialStore(tmp_path / "trials.db", "ctx", run_id=ev.store.run_id)  # a live worker
    assert other.claim(candidates[3].key(), 60)  # measuring batch 8
    assert other.claim("quality/" + candidates[3].numerics_key(), 60)  # a probe is no evaluation
    outcome = run_search(
        candidates, [], candidates[0], ev, SearchConfig(max_candidates=3), BOUND, progress=lambda _: None
    )
    # batch 1 and 2 here and batch 8 there fill the cap of three: batch 4 is not started
    assert [c.batch_size for c, _ in ev.asked] == [1, 2]
    assert outcome.not_reached == candidates[2:]
    assert ev.store.claims_held() == 0


def test_workers_together_stay_within_the_candidate_cap(evaluator, make_candidate) -> None:
    import threading
    import time

    from optimizer.search.runner import search_worker

    candidates = [make_candidate(batch_size=b, threads=t) for t in (1, 2, 4) for b in (1, 2, 4, 8)]
    search = SearchConfig(sampler="random", max_candidates=4, workers=3)
    workers = [evaluator() for _ in range(3)]
    for ev in workers:
        ev.store.run_id = "one-run"
        measure = ev.evaluate
        ev.evaluate = lambda c, role="candidate", stop_below=None, m=measure: time.sleep(0.3) or m(c, role)
    threads = [
        threading.Thread(
            target=search_worker, args=(candidates, candidates[0], ev, search, BOUND, lambda _: None)
        )
        for ev in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    workers[0].store.refresh()
    assert 1 <= workers[0].store.run_count() <= 4
    assert sum(len(ev.asked) for ev in workers) == workers[0].store.run_count()


def test_progress_shows_a_stored_result_rejected_under_this_runs_bound(evaluator, make_candidate) -> None:
    candidates = [make_candidate(batch_size=b) for b in (1, 2)]
    loose, strict = QualityConfig(max_kl=0.1), QualityConfig(max_kl=0.0005)  # the fake's KL: 0.001
    run_search(candidates, [], candidates[0], evaluator(), SearchConfig(), loose, progress=lambda _: None)
    lines: list[str] = []
    run_search(candidates, [], candidates[0], evaluator(), SearchConfig(), strict, progress=lines.append)
    assert len(lines) == 2
    assert all("REJECTED: KL 0.001 > quality.max_kl 0.0005" in line for line in lines)


def test_the_patience_stop_is_said_once_while_other_workers_measure(
    evaluator, make_candidate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The wait for other workers' results asks again whether to stop: the line printed twice."""
    from optimizer.search import runner as runner_module
    from optimizer.search.samplers import GridSampler

    class InOrder(GridSampler):  # an ordered sampler that is not a grid (a grid ignores patience)
        pass

    monkeypatch.setattr(runner_module, "make_sampler", lambda cfg, candidates, *_: InOrder(candidates))
    candidates = [make_candidate(batch_size=b) for b in (64, 1, 8, 2, 4)]
    ev = evaluator()
    other = TrialStore(tmp_path / "trials.db", "ctx", run_id=ev.store.run_id)  # a live worker
    assert other.claim(candidates[2].key(), 60)  # measuring batch 8: this worker waits for it
    said: list[str] = []
    run_search(candidates, [], candidates[0], ev, SearchConfig(patience=2), BOUND, progress=said.append)
    assert [c.batch_size for c, _ in ev.asked] == [64, 1, 2]
    assert sum(line.startswith("stopping:") for line in said) == 1
