"""The watchdog (search/watchdog.py): a candidate hung past its timeout is recorded failed and
ends its process; one that finishes leaves nothing behind; the coordinator keeps the others."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer.search.runner import WorkerReport
from optimizer.search.watchdog import HUNG_EXIT_CODE, MIN_SLACK_SECONDS, Watchdog, slack_seconds


def hang_or_report(spec: SimpleNamespace) -> WorkerReport:
    """A worker for the local launcher: worker 0 is ended by its watchdog, worker 1 reports."""
    if spec.index == 0:
        os._exit(HUNG_EXIT_CODE)
    return WorkerReport(evaluated=3)


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wattsmith-watchdog"]


def make_evaluator(tmp_path: Path, store, watchdog: Watchdog, timeout_minutes: float):  # type: ignore[no-untyped-def]
    import torch

    from optimizer.config import QualityConfig, SearchConfig, SloConfig, WorkloadConfig
    from optimizer.measure.workload import Workload
    from optimizer.search.evaluate import Evaluator
    from unit.factories import target_spec
    from unit.search.test_evaluate import VOCAB, CountingMeter

    return Evaluator(
        model=None,  # type: ignore[arg-type]  # only passed through to the (fake) build_engine
        target=target_spec(),
        meter=CountingMeter(),  # type: ignore[arg-type]
        workload=Workload(torch.randint(0, VOCAB, (4, 5)), 3),
        quality_tokens=torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1)),
        workload_cfg=WorkloadConfig(
            prompt_tokens=5,
            max_new_tokens=3,
            min_window_seconds=0.01,
            repeats=2,
            warmup_batches=1,
            idle_seconds=0,
            slo=SloConfig(tpot_ms=None),
        ),
        quality_cfg=QualityConfig(),
        search_cfg=SearchConfig(candidate_timeout_minutes=timeout_minutes),
        store=store,
        workdir=tmp_path,
        watchdog=watchdog,
    )


def test_a_hung_build_is_recorded_failed_gives_its_lease_up_and_ends_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from optimizer.results import FAILED
    from optimizer.search import evaluate as evaluate_module
    from optimizer.store import TrialStore
    from unit.factories import torch_candidate
    from unit.search.test_evaluate import FakeEngine

    ended = threading.Event()  # set by the process's end alone: a hang that never returns itself
    codes: list[int] = []

    def exit_process(code: int) -> None:
        codes.append(code)
        ended.set()

    def build_engine(model, candidate, target, workdir):  # type: ignore[no-untyped-def]
        if candidate.settings.precision == "bf16":
            assert ended.wait(30), "the watchdog never fired"
            raise RuntimeError("the process would be gone")
        return FakeEngine(candidate.settings, [])

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    store = TrialStore(tmp_path / "t.db", "ctx")
    candidate = torch_candidate(batch_size=2, precision="bf16")
    assert store.claim(candidate.key(), 60, candidate.label())  # as the worker loop does
    dog = Watchdog(exit=exit_process, slack_seconds=0.0, poll_seconds=0.01)
    make_evaluator(tmp_path, store, dog, timeout_minutes=0.2 / 60).evaluate(candidate)

    assert codes == [HUNG_EXIT_CODE]
    stored = TrialStore(tmp_path / "t.db", "ctx").get(candidate)  # as a resumed run reads it
    assert stored is not None and stored.status == FAILED
    assert stored.reason is not None and stored.reason.startswith("hung: still building after")
    assert "search.candidate_timeout_minutes=" in stored.reason and stored.seconds > 0
    assert store.claim_owner(candidate.key()) is None  # the lease is given up
    assert "bf16" in caplog.text and "hung: still building" in caplog.text
    assert "every thread's stack" in caplog.text and "in build_engine" in caplog.text  # where it hung
    assert "recorded it FAILED" in caplog.text and "Run the same command again to resume" in caplog.text
    assert not watchdog_threads()


def test_a_hang_without_the_candidates_lease_is_not_recorded(tmp_path: Path) -> None:
    """A finalist's round holds its lease in the round's store: the search's row stays."""
    from optimizer.store import TrialStore
    from unit.factories import torch_candidate

    store = TrialStore(tmp_path / "t.db", "ctx")
    candidate = torch_candidate()
    codes: list[int] = []
    dog = Watchdog(exit=codes.append, slack_seconds=0.0, poll_seconds=0.01)
    with dog.watching(candidate, "finalist", store, 0.05 / 60):
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            time.sleep(0.01)
    assert codes == [HUNG_EXIT_CODE]
    assert store.get(candidate) is None


def test_a_candidate_that_finishes_in_time_leaves_no_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.results import MEASURED
    from optimizer.search import evaluate as evaluate_module
    from unit.factories import torch_candidate
    from unit.search.test_evaluate import FakeEngine

    monkeypatch.setattr(evaluate_module, "build_engine", lambda m, c, t, w: FakeEngine(c.settings, []))
    codes: list[int] = []
    dog = Watchdog(exit=codes.append, slack_seconds=0.0, poll_seconds=0.01)
    result = make_evaluator(tmp_path, None, dog, timeout_minutes=1.0).evaluate(torch_candidate(batch_size=2))
    assert result.status == MEASURED
    time.sleep(0.05)
    assert codes == [] and not watchdog_threads()


def test_the_watchdog_never_ends_the_process_after_the_candidate_finished() -> None:
    """Finishing right at the limit, over and over: an exit comes while the candidate is still
    running or never (finishing waits for one under way), and no watch thread is left."""
    from unit.factories import torch_candidate

    candidate = torch_candidate()
    running = [False]
    late: list[int] = []
    fired: list[int] = []

    def exit_process(code: int) -> None:
        fired.append(code)
        if not running[0]:
            late.append(code)

    dog = Watchdog(exit=exit_process, slack_seconds=0.0, poll_seconds=0.0005)
    rng = random.Random(0)
    for _ in range(200):
        running[0] = True
        with dog.watching(candidate, "candidate", None, 0.002 / 60):
            time.sleep(rng.uniform(0.0, 0.004))
        running[0] = False
    time.sleep(0.05)
    assert late == [] and not watchdog_threads()
    assert all(code == HUNG_EXIT_CODE for code in fired)


def test_the_slack_lets_a_batch_past_the_deadline_finish() -> None:
    """The unit tests' tiny timeouts never reach the watchdog with its real exit."""
    assert slack_seconds(0.1 / 60) == MIN_SLACK_SECONDS
    assert slack_seconds(15) == 15 * 60


def test_a_local_worker_ended_by_its_watchdog_is_reported_hung_and_the_others_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from optimizer.errors import UserError
    from optimizer.search.launchers import local_processes

    both = [SimpleNamespace(index=0), SimpleNamespace(index=1)]
    assert local_processes(both, hang_or_report) == [WorkerReport(evaluated=3)]  # type: ignore[arg-type]
    assert "worker 0 failed: WorkerHung: search.candidate_timeout_minutes: worker-0 ended" in caplog.text
    assert "Traceback" not in caplog.text
    # every worker hung: the CLI's one message (a UserError), no traceback
    with pytest.raises(UserError, match="run the same command again to resume"):
        local_processes(both[:1], hang_or_report)  # type: ignore[arg-type]
