"""RAPL's wrapping energy counters read through one window: at its edges and, between them, by a
thread every `poll_seconds`, so that no counter wraps twice between two reads (energy.py).

A read between the edges can fail (sysfs answers EIO or EAGAIN under load, a read catches a file
mid-replace): the thread skips it and the next read covers the gap, so the thread never dies and
leaves the window read at its edges only. A gap longer than a wrap loses whole wraps, which cannot
be seen afterwards, so a window whose reads failed says how long it went unread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class CounterPoll:
    """Microjoules counted over a window by counters that wrap at `ranges` (one per domain).

    Made at the window's start (its first read), entered for the window's body, `finish()`ed at
    its end. The edges' reads raise: a window that cannot be read at all has no figure."""

    def __init__(
        self,
        read: Callable[[], list[int]],
        ranges: list[int],
        poll_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._ranges, self._clock = read, ranges, clock
        self.poll_seconds = poll_seconds
        self.microjoules = [0] * len(ranges)  # per domain: each wraps at its own power
        self.polls = 0
        self.failed = 0
        self.error = ""
        self.longest_gap = 0.0  # seconds between two reads that succeeded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._last_at = clock()
        self._last = read()

    def __enter__(self) -> CounterPoll:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()  # also when the window's body raised: no thread outlives its window
        self._thread.join()

    def finish(self) -> int:
        """The window's end read; the microjoules over every domain."""
        self._advance()
        return sum(self.microjoules)

    def _advance(self) -> None:
        now, at = self._read(), self._clock()
        for i, (start, end, wrap) in enumerate(zip(self._last, now, self._ranges, strict=True)):
            self.microjoules[i] += (end - start) % wrap
        self.longest_gap = max(self.longest_gap, at - self._last_at)
        self._last, self._last_at = now, at

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.polls += 1
            try:
                self._advance()
            # any error: a thread that dies leaves the window read at its edges, silently
            except Exception as exc:
                self.failed += 1
                if not self.error:
                    log.warning("reading RAPL failed, polling on: %s", exc)
                self.error = f"{type(exc).__name__}: {exc}"

    def warning(self, seconds: float) -> str | None:
        """What a window of `seconds` whose polls failed may have lost; None when none failed."""
        if not self.failed:
            return None
        text = (
            f"RAPL energy_uj could not be read at {self.failed} of {self.polls} polls ({self.error}): "
            f"{self.longest_gap:.1f} s went unread, and a counter that wraps within such a gap loses "
            "whole wraps"
        )
        wraps = [r / (uj / seconds) for r, uj in zip(self._ranges, self.microjoules, strict=True) if uj > 0]
        if wraps and seconds > 0:
            text += f" (at this window's power one wraps every {min(wraps):.1f} s)"
        return text
