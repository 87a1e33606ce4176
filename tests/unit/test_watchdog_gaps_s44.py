"""The watchdog's gaps: a hung finalist is recorded in its round, a hang in the quality probe counts
once and as a hang, and the time a candidate waits its turn counts against neither its timeout nor
its watchdog."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from optimizer.results import FAILED, MEASURED
from optimizer.search import evaluate as evaluate_module
from optimizer.search.watchdog import HUNG_EXIT_CODE, Watchdog
from optimizer.store import TrialStore
from optimizer.store.leases import worker_identity
from unit.factories import torch_candidate
from unit.search.test_evaluate import FakeEngine
from unit.test_watchdog import make_evaluator, watchdog_threads


def dead_identity() -> str:
    """A worker identity of this host whose process is gone: its leases are taken over at once."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    return f"{worker_identity().rsplit(':', 2)[0]}:{exited.pid}:dead"


class Hang:
    """A call that never returns until the test ends it; `ended` is set by the watchdog's exit."""

    def __init__(self) -> None:
        self.ended, self.release, self.codes = threading.Event(), threading.Event(), []

    def exit(self, code: int) -> None:
        self.codes.append(code)
        self.ended.set()

    def hang(self) -> None:
        self.release.wait(30)
        raise RuntimeError("the process would be gone")

    def dog(self) -> Watchdog:
        return Watchdog(exit=self.exit, slack_seconds=0.0, poll_seconds=0.01)

    @contextmanager
    def running(self, work: Callable[[], Any]) -> Iterator[None]:
        """`work` in a thread that hangs until the watchdog fired and the block ends."""
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            assert self.ended.wait(30), "the watchdog never fired"
            yield
        finally:
            self.release.set()
            thread.join(30)
        assert self.codes == [HUNG_EXIT_CODE] and not watchdog_threads()


def test_a_hung_finalist_is_recorded_failed_in_its_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.config import SearchConfig
    from optimizer.search.finalists import _measured_round, _stored

    hang = Hang()

    def build_engine(model, candidate, target, workdir):  # type: ignore[no-untyped-def]
        if candidate.settings.precision == "bf16":
            hang.hang()
        return FakeEngine(candidate.settings, [])

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    search = TrialStore(tmp_path / "t.db", "ctx")
    rounds = TrialStore(tmp_path / "t.db", "ctx-round-0", worker=search.worker)  # as _round_store
    evaluator = make_evaluator(tmp_path, search, hang.dog(), timeout_minutes=0.3 / 60)
    candidate = torch_candidate(batch_size=2, precision="bf16")
    with hang.running(lambda: _measured_round(evaluator, rounds, candidate, SearchConfig())):
        resumed = TrialStore(tmp_path / "t.db", "ctx-round-0")  # the round, as a resumed run reads it
        stored = _stored(resumed, candidate, SearchConfig())
        assert stored is not None and stored.status == FAILED and stored.role == "finalist"
        assert stored.reason is not None and stored.reason.startswith("hung: still building")
        assert resumed.claim_owner(candidate.key()) is None  # given up: no death when it is claimed
        assert TrialStore(tmp_path / "t.db", "ctx").get(candidate) is None  # the search's row stays


def test_a_hang_in_the_quality_probe_counts_once_as_a_hang_of_the_numerics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch size probes alike: two hangs there fail the others, saying they hung."""
    path = tmp_path / "t.db"
    monkeypatch.setattr(evaluate_module, "build_engine", lambda m, c, t, w: FakeEngine(c.settings, []))
    for batch_size in (2, 4):  # two processes, each hung in the probe of bf16
        hang = Hang()
        monkeypatch.setattr(
            evaluate_module, "evaluate_quality", lambda engine, reference, hang=hang: hang.hang()
        )
        store = TrialStore(path, "ctx", worker=dead_identity())  # gone once its watchdog ended it
        candidate = torch_candidate(batch_size=batch_size, precision="bf16")
        assert store.claim(candidate.key(), 60, candidate.label())  # as the worker loop does
        evaluator = make_evaluator(tmp_path, store, hang.dog(), timeout_minutes=0.5 / 60)
        with hang.running(lambda: evaluator.evaluate(candidate)):  # noqa: B023 - run in the block
            after = TrialStore(path, "ctx")
            stored = after.get(candidate)
            assert stored is not None and stored.reason is not None
            assert stored.reason.startswith("hung: still in the quality probe")
            numerics = candidate.numerics_key()
            # no lease left behind for a claim to count again, as an anonymous death
            assert after.claim_owner("quality/probe/" + numerics) is None
            assert after.claim_owner("quality/" + numerics) is None
            other = torch_candidate(batch_size=8, precision="bf16")
            assert after.deaths_probing(other) == after.deaths_probing(other, hung=True) == batch_size // 2

    other = torch_candidate(batch_size=8, precision="bf16")
    failed = make_evaluator(tmp_path, TrialStore(path, "ctx"), Watchdog(), 15).evaluate(other)
    assert failed.status == FAILED and failed.reason is not None
    assert failed.reason.startswith(
        "2 processes died in the quality probe of its numerics, 2 of them hung past "
        "search.candidate_timeout_minutes (ended by the watchdog); every batch size"
    )


class SlowDevice:
    """A device lock another worker holds exclusive for `seconds` (its energy windows)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @contextmanager
    def shared(self) -> Iterator[None]:
        yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        time.sleep(self.seconds)
        yield


def test_waiting_for_the_device_counts_against_neither_the_timeout_nor_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate_module, "build_engine", lambda m, c, t, w: FakeEngine(c.settings, []))
    codes: list[int] = []
    dog = Watchdog(exit=codes.append, slack_seconds=0.0, poll_seconds=0.01)
    evaluator = make_evaluator(tmp_path, None, dog, timeout_minutes=1.0 / 60)
    evaluator.device = SlowDevice(2.5)  # type: ignore[assignment]
    result = evaluator.evaluate(torch_candidate(batch_size=2))
    assert result.status == MEASURED, result.reason
    assert codes == [] and not watchdog_threads()


def test_the_watch_never_fires_while_the_candidate_waits_its_turn() -> None:
    codes: list[int] = []
    dog = Watchdog(exit=codes.append, slack_seconds=0.0, poll_seconds=0.01)
    with dog.watching(torch_candidate(), "candidate", None, 0.05 / 60) as watch:
        with watch.waiting(SlowDevice(0.3).exclusive()):
            pass
        with watch.aside():  # the wait for another worker's quality result
            time.sleep(0.3)
    assert codes == [] and 0.55 < watch.waited < 5
