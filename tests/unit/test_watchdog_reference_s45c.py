"""The quality reference under the watchdog (search/evaluate.py): its build is timed by a watch of
its own, set aside from the candidate that waits for it. A slow reference is not the candidate's
time, and a reference that hangs is reported as the reference's: the candidate is not recorded
failed, and its leases are given up (no death of it counted)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from optimizer.config import QualityConfig
from optimizer.results import MEASURED
from optimizer.search import evaluate as evaluate_module
from optimizer.search.watchdog import HUNG_EXIT_CODE, Watchdog
from optimizer.space import Candidate, reference_candidate
from optimizer.store import TrialStore
from unit.factories import target_spec, torch_candidate
from unit.search.test_evaluate import FakeEngine
from unit.test_watchdog import make_evaluator, watchdog_threads

TIMEOUT_SECONDS = 2.0  # room for the rest of the evaluation on a busy machine


def is_reference(candidate: Candidate) -> bool:
    return candidate == reference_candidate(QualityConfig().reference, target_spec())


def test_the_references_time_does_not_count_against_the_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reference and build within the timeout each, together past it: before, the watchdog
    fired on the candidate ('still building' after the reference's time and its own)."""

    def build_engine(model, candidate, target, workdir):  # type: ignore[no-untyped-def]
        time.sleep(TIMEOUT_SECONDS * (0.7 if is_reference(candidate) else 0.4))
        return FakeEngine(candidate.settings, [])

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    codes: list[int] = []
    dog = Watchdog(exit=codes.append, slack_seconds=0.0, poll_seconds=0.01)
    evaluator = make_evaluator(tmp_path, None, dog, timeout_minutes=TIMEOUT_SECONDS / 60)
    result = evaluator.evaluate(torch_candidate(batch_size=2, precision="bf16"))
    assert codes == []
    assert result.status == MEASURED, result.reason
    assert not watchdog_threads()


def test_a_hung_reference_is_reported_as_the_references_not_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ended = threading.Event()
    codes: list[int] = []

    def exit_process(code: int) -> None:
        codes.append(code)
        ended.set()

    def build_engine(model, candidate, target, workdir):  # type: ignore[no-untyped-def]
        if is_reference(candidate):
            assert ended.wait(30), "the watchdog never fired"
            raise RuntimeError("the process would be gone")
        return FakeEngine(candidate.settings, [])

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    store = TrialStore(tmp_path / "t.db", "ctx")
    candidate = torch_candidate(batch_size=2, precision="bf16")
    assert store.claim(candidate.key(), 60, candidate.label())  # as the worker loop does
    dog = Watchdog(exit=exit_process, slack_seconds=0.0, poll_seconds=0.01)
    # the fake exit lets the evaluation go on after the hang: a timeout with room for it
    make_evaluator(tmp_path, store, dog, timeout_minutes=1.0 / 60).evaluate(candidate)

    assert codes == [HUNG_EXIT_CODE]
    assert "(reference) hung: still building the quality reference" in caplog.text
    assert f"{candidate.label()} (candidate) hung" not in caplog.text
    resumed = TrialStore(tmp_path / "t.db", "ctx")  # as a resumed run reads it
    assert resumed.get(candidate) is None  # not the candidate's failure: it is measured again
    assert store.claim_owner(candidate.key()) is None  # given up: no death of it counted
    assert resumed.deaths_measuring(candidate) == 0
    assert not watchdog_threads()
