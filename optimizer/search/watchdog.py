"""The watchdog of one candidate's evaluation (build, quality probe, windows).

search.candidate_timeout_minutes is checked between batches only: a build, probe or generate call
that never returns (in native code, which no Python thread can interrupt) would hold its worker,
and its lease, which the lease keeper's thread renews, forever. Past the timeout plus a slack the
watchdog says so, dumps every thread's stack, records the candidate FAILED (giving its lease up)
and ends the process: a resumed run, or the other workers, go on without it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone

from optimizer.results import FAILED, CandidateResult
from optimizer.space import Candidate
from optimizer.store import TrialStore

log = logging.getLogger(__name__)

HUNG_EXIT_CODE = 4  # optimize's own codes: 0 done, 1 verify failed, 2 bad input, 3 crashed, 130 interrupted
MIN_SLACK_SECONDS = 300.0
# faulthandler's timer runs in a C thread that needs no GIL: it ends the process (exit code 1)
# when native code holding the GIL keeps the watchdog's own thread from ever running
BACKSTOP_SECONDS = 120.0


# the store holding the leases of the candidates watched in this context, when not the evaluator's
_LEASES: ContextVar[TrialStore | None] = ContextVar("wattsmith_leases", default=None)


@contextmanager
def leases_in(store: TrialStore | None) -> Iterator[None]:
    """Candidates evaluated in the block hold their leases in `store` (a finalist's round, which
    the evaluator does not see): a hang is recorded failed there, as whoever holds the lease
    records a failure; left to lapse, it would count as a death."""
    token = _LEASES.set(store)
    try:
        yield
    finally:
        _LEASES.reset(token)


def slack_seconds(timeout_minutes: float) -> float:
    """How long past search.candidate_timeout_minutes a candidate may run before it counts as hung.

    The deadline is checked after every batch (and stream run), so a candidate past it fails with
    CandidateTimeout once its current batch returns: the slack only lets that batch finish and the
    engine close (a layout's ranks exit), which a clean failure needs. One batch taking longer than
    the whole timeout is a hang for this purpose; at least 5 minutes so that a small timeout still
    leaves time to close an engine."""
    return max(timeout_minutes * 60, MIN_SLACK_SECONDS)


def now_iso() -> str:
    """Now in UTC to the second: a result's finished_at."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def thread_stacks() -> str:
    """Every thread's Python stack, named: where the hung call is."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(
        f"thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)).rstrip()
        for ident, frame in sys._current_frames().items()
    )


def _flush_logs() -> None:
    for logger in (logging.getLogger("optimizer"), logging.getLogger()):
        for handler in logger.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@dataclass
class Watchdog:
    """Watches each candidate's evaluation (`watching`). Tests inject `exit` and `clock`; the
    real exit is os._exit, since the main thread may be stuck in native code."""

    exit: Callable[[int], object] = os._exit
    clock: Callable[[], float] = time.monotonic
    slack_seconds: float | None = None  # None: `slack_seconds(timeout)`
    poll_seconds: float = 5.0
    backstop: bool | None = None  # faulthandler's timer too; None: only with the real exit

    @contextmanager
    def watching(
        self, candidate: Candidate, role: str, store: TrialStore | None, timeout_minutes: float
    ) -> Iterator[Watch]:
        """Watch the block; the watch is cancelled, its thread joined, as soon as the block ends.
        `store`: the one holding the candidate's lease, where a hang is recorded (unless
        `leases_in` names another)."""
        held = _LEASES.get()
        watch = Watch(self, candidate, role, held if held is not None else store, timeout_minutes)
        watch.start()
        try:
            yield watch
        finally:
            watch.finish()


class Watch:
    """One candidate's watch; `phase` says what the evaluation is doing, for the message."""

    def __init__(
        self,
        dog: Watchdog,
        candidate: Candidate,
        role: str,
        store: TrialStore | None,
        timeout_minutes: float,
    ) -> None:
        self.phase: str | None = None
        self._dog, self._candidate, self._role, self._store = dog, candidate, role, store
        self._timeout_minutes = timeout_minutes
        self._slack = dog.slack_seconds if dog.slack_seconds is not None else slack_seconds(timeout_minutes)
        self._limit = timeout_minutes * 60 + self._slack
        self._started = dog.clock()
        # seconds spent waiting its turn (`aside`): not the candidate's own, so they extend both
        # this limit and the candidate's own deadline (Evaluator._evaluate)
        self.waited = 0.0
        self._aside_since: float | None = None
        # whoever holds more of the candidate's leases settles them before the process ends
        self.on_hang: Callable[[], object] | None = None
        self._done = threading.Event()
        # held while firing and while finishing: the exit happens before the block ends, never after
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="wattsmith-watchdog", daemon=True)
        self._backstop = dog.backstop if dog.backstop is not None else dog.exit is os._exit

    def start(self) -> None:
        self._arm_backstop()
        self._thread.start()

    def finish(self) -> None:
        with self._lock:
            self._done.set()
        self._thread.join()
        self._cancel_backstop()

    def _arm_backstop(self) -> None:
        if not self._backstop:
            return
        left = self._limit - self._elapsed()
        try:
            stderr = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
            faulthandler.dump_traceback_later(left + BACKSTOP_SECONDS, exit=True, file=stderr)
        except (ValueError, OSError):  # no usable stderr: no backstop
            self._backstop = False

    def _cancel_backstop(self) -> None:
        if self._backstop:
            faulthandler.cancel_dump_traceback_later()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Time in the block (waiting for the device, or for another worker's quality result) is
        not this candidate's: it never counts towards the limit, even while it lasts, and it is
        added to `waited`."""
        self._cancel_backstop()
        self._aside_since = self._dog.clock()
        try:
            yield
        finally:
            self.waited += self._dog.clock() - self._aside_since
            self._aside_since = None
            self._arm_backstop()

    @contextmanager
    def waiting(self, lock: AbstractContextManager[None]) -> Iterator[None]:
        """Hold `lock` (the device); the wait for it, while other workers measure, is `aside` (a
        worker hung holding it is ended by its own watchdog, which frees it)."""
        with contextlib.ExitStack() as held:
            with self.aside():
                held.enter_context(lock)
            yield

    def _elapsed(self) -> float:
        """The candidate's own running time: since it started, less the time it waited."""
        now = self._dog.clock()
        aside = self._aside_since
        return now - self._started - self.waited - (now - aside if aside is not None else 0.0)

    def _run(self) -> None:
        while (left := self._limit - self._elapsed()) > 0:
            if self._done.wait(min(left, self._dog.poll_seconds)):
                return
        with self._lock:
            if not self._done.is_set():
                self._fire(self._elapsed())

    def _fire(self, elapsed: float) -> None:
        try:
            label = f"{self._candidate.label()} ({self._role})"
            doing = self.phase or "running"
            timeout = f"search.candidate_timeout_minutes={self._timeout_minutes:g}"
            log.error(
                "%s hung: still %s after %s, past %s plus %s of slack (a call that never returns, "
                "likely in native code); every thread's stack:\n%s",
                label,
                doing,
                _minutes(elapsed),
                timeout,
                _minutes(self._slack),
                thread_stacks(),
            )
            reason = (
                f"hung: still {doing} after {_minutes(elapsed)}, past {timeout} plus {_minutes(self._slack)}; "
                "its process was ended (search.retry_failed=true tries it again)"
            )
            try:  # before the candidate's row: a retry of it counts its hang no more
                if self.on_hang is not None:
                    self.on_hang()
            except Exception:  # noqa: BLE001 - the candidate is recorded all the same
                log.exception("could not give up the other leases of %s", label)
            recorded = self._record(reason, elapsed)
            log.error(
                "%s; ending this process (exit code %d): nothing else stops a native call. Run the same "
                "command again to resume%s; if it is only slow, raise search.candidate_timeout_minutes=%g",
                "recorded it FAILED in the store" if recorded else "not recorded in the store",
                HUNG_EXIT_CODE,
                ": it is not built again" if recorded else "",
                self._timeout_minutes * 2,
            )
        except Exception:  # noqa: BLE001 - the process must end all the same
            log.exception("the watchdog could not report %s", self._candidate.label())
        finally:
            _flush_logs()
            self._dog.exit(HUNG_EXIT_CODE)

    def give_up_lease(self) -> None:
        """Give the candidate's lease up unrecorded, where this worker holds it: a hang that is not
        its own (its quality reference's) must count as no death of it."""
        store = self._store
        if store is not None and store.claim_owner(self._candidate.key()) == store.worker:
            store.release(self._candidate.key())

    def _record(self, reason: str, elapsed: float) -> bool:
        """Record the candidate FAILED, giving its lease up, when this worker holds its lease in
        the store: the one that holds it (a finalist's round: the round's store)."""
        store = self._store
        if store is None or store.claim_owner(self._candidate.key()) != store.worker:
            return False
        failed = CandidateResult(
            self._candidate, FAILED, reason=reason, role=self._role, seconds=elapsed, finished_at=now_iso()
        )
        store.append(failed)  # also gives up the lease
        return True
