"""SIGTERM as Ctrl-C: `kill`, a scheduler's stop or a container's shutdown end a run the way an
interrupt does (finally blocks run: leases are given up, child workers stopped), so a resumed run
neither waits for anything nor counts a death.

An interrupt is recorded as well as raised: Python swallows an exception raised inside a finalizer
("Exception ignored in ...": a __del__ that calls gc.collect(), as transformers'
ContinuousBatchProcessor does), and the run would go on to its end. The search calls
`raise_if_interrupted()` between candidates and rounds, so a swallowed interrupt stops it there."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_interrupted = False  # a signal came inside sigterm_interrupts() (main thread only)
_deferring = False  # inside deferred_interrupts(), outside interruptible(): a signal is only recorded


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if an interrupt came inside `sigterm_interrupts()`: one swallowed
    where it landed is not lost."""
    if _interrupted:
        raise KeyboardInterrupt


def _cleaning_up() -> bool:
    """Whether a KeyboardInterrupt is being handled (an except, finally or __exit__ runs for it):
    an interrupt is on its way out, its clean-up under way."""
    error = sys.exc_info()[1]
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """An interrupt (inside `sigterm_interrupts()`) that lands in the block is recorded and raised
    as the block ends, not where it landed: what the block finishes is not lost half-way (a
    measured result on its way to the store). `interruptible()` opens what takes long in it (the
    measurement itself) to interrupts again. An error ending the block goes on as it is."""
    global _deferring
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
    if not outer:
        raise_if_interrupted()


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside `deferred_interrupts()`: an interrupt raises in this block again, one deferred
    before it at its start. Elsewhere it changes nothing."""
    global _deferring
    outer, _deferring = _deferring, False
    try:
        if outer:
            raise_if_interrupted()
        yield
    finally:
        _deferring = outer


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM, and SIGINT where Python's own handler has it (a local worker ignores SIGINT: its
    coordinator stops it), raise KeyboardInterrupt inside the block; one swallowed before the block
    ends is raised at its end, also in place of an error the block ends with. The previous handlers
    come back after, except SIGTERM's once an interrupt came: the process is on its way out, and a
    late SIGTERM (a process-group kill after the clean-up) must not kill it with -15 where the
    interrupted run reports 130."""
    global _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return

    def interrupt(_signum: int, _frame: object) -> None:
        global _interrupted
        _interrupted = True
        # one interrupt: a second one (a process-group kill, then the coordinator's own) must not
        # land inside the clean-up the first one started. One after a swallowed raise interrupts.
        # Deferred: raised as the deferring block ends (deferred_interrupts).
        if not _cleaning_up() and not _deferring:
            raise KeyboardInterrupt

    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        caught.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, interrupt) for signum in caught}
    outer, _interrupted = _interrupted, False
    try:
        yield
        raise_if_interrupted()  # swallowed after the last boundary: the block still ends interrupted
    except Exception as error:
        # a swallowed interrupt, then an error of what it tore down (an engine whose __del__ it hit):
        # the run was stopped, not broken, and ends as interrupted (exit 130, not a crash's code)
        if _interrupted:
            raise KeyboardInterrupt from error
        raise
    finally:
        came = _interrupted
        for signum, handler in previous.items():
            keep_ignored = came and signum == signal.SIGTERM
            signal.signal(signum, signal.SIG_IGN if keep_ignored else handler)
        _interrupted = outer  # after the handlers: a late signal cannot set it again
