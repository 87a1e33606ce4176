"""SIGTERM as Ctrl-C: `kill`, a scheduler's stop or a container's shutdown end a run the way an
interrupt does (finally blocks run: leases are given up, child workers stopped), so a resumed run
neither waits for anything nor counts a death."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block. The previous handler comes back after,
    unless a SIGTERM came: then the process is on its way out, and further ones stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    terminated = False

    def interrupt(_signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True
        # one interrupt: a second SIGTERM (a process-group kill, then the coordinator's own) must
        # not land inside the clean-up the first one started, nor kill the process after it
        # (exit -15 where the interrupted run reports 130)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if not terminated:
            signal.signal(signal.SIGTERM, previous)
