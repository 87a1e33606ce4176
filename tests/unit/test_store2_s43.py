"""What a search counts against search.max_candidates, and a worker that lost its lease."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import FAILED, MEASURED
from optimizer.search.evaluate import died_measuring, died_probing
from optimizer.search.runner import run_search
from optimizer.store import TrialStore, claims_table, leases_kept
from optimizer.store.leases import worker_identity
from unit.search import test_evaluate

log, make_evaluator = test_evaluate.log, test_evaluate.make_evaluator  # its fixtures, by name


def exited_worker(path: Path) -> TrialStore:
    """A store as a worker of this host that has since died would have used it."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    return TrialStore(path, "ctx", worker=f"{worker_identity().rsplit(':', 2)[0]}:{exited.pid}:gone")


def two_deaths(path: Path, key: str) -> None:
    """Two processes died measuring `key`, each found dead by the next claimant."""
    for _ in range(2):
        assert exited_worker(path).claim(key, 3600)
        taker = TrialStore(path, "ctx")
        assert taker.claim(key, 60)
        taker.release(key)


class InstantEvaluator:
    def __init__(self, store: TrialStore, make_result, make_performance) -> None:
        self.store = store
        self.asked: list = []
        self._make = lambda candidate, role: make_result(
            candidate=candidate,
            status=MEASURED,
            role=role,
            performance=make_performance(goodput_tokens_per_joule=candidate.batch_size),
            seconds=0.01,
        )

    def evaluate(self, candidate, role="candidate", stop_below=None):
        self.asked.append(candidate)
        return self._make(candidate, role)


def test_a_failure_recorded_for_deaths_uses_no_candidate_slot(
    tmp_path: Path, make_candidate, make_result
) -> None:
    store = TrialStore(tmp_path / "trials.db", "ctx")
    store.append(died_measuring(make_candidate(batch_size=2), 2))
    store.append(died_probing(make_candidate(batch_size=4), 2))
    assert store.run_count() == 0  # nothing was built or measured for either
    ran = make_result(candidate=make_candidate(batch_size=8), status=FAILED, reason="OOM", seconds=3.0)
    store.append(ran)
    assert store.run_count() == 1  # a failure that ran is an evaluation


def test_a_candidate_failed_for_deaths_leaves_its_slot_to_the_next(
    tmp_path: Path, make_candidate, make_result, make_performance
) -> None:
    path = tmp_path / "trials.db"
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4)]
    two_deaths(path, cands[1].key())
    ev = InstantEvaluator(TrialStore(path, "ctx"), make_result, make_performance)
    outcome = run_search(
        cands, [], cands[0], ev, SearchConfig(max_candidates=2), QualityConfig(), progress=lambda _: None
    )
    failed = {r.candidate.batch_size: r for r in outcome.results if r.status == FAILED}
    assert failed[2].reason is not None and failed[2].reason.startswith("2 processes died measuring it")
    assert ev.asked == [cands[0], cands[2]]  # the baseline and batch 4 fill the cap of two
    assert outcome.not_reached == []


# --- a lease lost while stalled --------------------------------------------------------------


def stalled_and_taken_over(path: Path, key: str) -> tuple[TrialStore, TrialStore]:
    """A live worker here whose lease lapsed (it renewed nothing for the lease's length) and the
    worker that took the key over."""
    stalled, other = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    assert stalled.claim(key, 0.05)
    time.sleep(0.1)
    assert other.claim(key, 60)  # lapsed: taken from a live worker without a death
    return stalled, other


def test_a_worker_that_lost_its_lease_abandons_the_result(
    tmp_path: Path, make_result, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trials.db"
    result = make_result()
    key = result.candidate.key()
    stalled, other = stalled_and_taken_over(path, key)
    with caplog.at_level(logging.WARNING, logger="optimizer.store"):
        stalled.append(result)
    assert "another worker took" in caplog.text
    assert stalled.get(result.candidate) is None
    other.refresh()
    assert other.get(result.candidate) is None  # nothing stored: the holder's result will be
    assert other.claim_owner(key) == other.worker  # and its lease stays
    other.append(result)
    assert TrialStore(path, "ctx").get(result.candidate) is not None


def test_appending_without_a_lease_or_with_ones_own_is_unchanged(tmp_path: Path, make_result) -> None:
    path = tmp_path / "trials.db"
    result = make_result()
    store = TrialStore(path, "ctx")
    store.append(result)  # never claimed (a finalist whose lease a live run holds, say)
    assert store.claim(result.candidate.key(), 0.01)
    time.sleep(0.05)  # lapsed, but nobody took it: still this worker's
    store.append(result)
    assert store.run_count() == 1 and store.claims_held() == 0


def test_the_lease_keeper_says_when_a_lease_was_taken(
    tmp_path: Path, make_result, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trials.db"
    key = make_result().candidate.key()
    store, other = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    with caplog.at_level(logging.WARNING, logger="optimizer.store"), leases_kept(store, 0.2):
        assert store.claim(key, 0.2, "bs=1")
        with store._engine.begin() as connection:  # as a takeover after a stall would
            connection.execute(update(claims_table).values(owner=other.worker))
        deadline = time.monotonic() + 10  # the keeper renews every 0.05 s (on a busy machine, later)
        while "lost the lease" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # a few renewals more
    assert caplog.text.count("lost the lease on bs=1") == 1  # said once


def test_a_worker_that_lost_its_lease_does_not_measure_energy(
    log,
    make_evaluator,
    make_candidate,
    tmp_path: Path,
) -> None:
    candidate = make_candidate(batch_size=2)
    stalled, _other = stalled_and_taken_over(tmp_path / "t.db", candidate.key())
    result = make_evaluator(store=stalled).evaluate(candidate)
    assert result.status == FAILED and "another worker took" in (result.reason or "")
    assert ("generate", candidate.settings.label()) not in log  # no window ran beside the other's
    assert ("close", candidate.settings.label()) in log


def test_nothing_feasible_blames_the_cap_only_when_it_was_reached(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline (batch 1, outside the space) is failed for two deaths, which uses no slot of
    search.max_candidates=1: the time budget left the space unmeasured, not the cap."""
    import optimizer
    from optimizer import target as target_module
    from optimizer.config import compose_run_config
    from optimizer.measure import energy

    model, _cores, memory, bf16 = target_module._detect_cpu()
    monkeypatch.setattr(target_module, "_detect_cpu", lambda: (model, 1, memory, bf16))
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(TrialStore, "deaths_measuring", lambda self, candidate: 2)
    cfg = compose_run_config(
        [
            f"model={tiny_model_dir}",
            "target=cpu",
            "workload=quick",
            "workload.idle_seconds=0.1",
            "space.batch_sizes=[2]",
            "space.torch.quantizations=[none]",
            "quality.num_sequences=2",
            "quality.seq_tokens=32",
            "search.max_candidates=1",
            "search.budget_minutes=1e-9",
            f"output_dir={tmp_path / 'out'}",
            f"store_path={tmp_path / 'trials.db'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    result = optimizer.optimize(cfg)
    assert result.baseline is not None and result.baseline.status == FAILED
    assert result.infeasible is not None and result.infeasible.field == "search.budget_minutes"
