"""SIGTERM as Ctrl-C: `kill`, a scheduler's stop or a container's shutdown end a run the way an
interrupt does (finally blocks run: leases are given up, child workers stopped), so a resumed run
neither waits for anything nor counts a death."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(_signum: int, _frame: object) -> None:
    # one interrupt: a second SIGTERM (a process-group kill, then the coordinator's own) must not
    # land inside the clean-up the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
