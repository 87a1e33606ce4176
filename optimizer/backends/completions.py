"""`ServingEngine.collect` for engines that run their own loop thread (the queue in front of
lockstep engines, llama.cpp's batch, genai's Engine): one way to wait for finished requests."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from optimizer.measure.serving import Completion


def take_completions(
    cond: threading.Condition,
    done: collections.deque[Completion],
    stopped: Callable[[], bool],
    timeout_seconds: float,
) -> list[Completion]:
    """`ServingEngine.collect` for an engine whose loop thread appends to `done` under `cond`:
    wait until something is done, the loop stops or the timeout passes, then take it all. The
    caller holds `cond`."""
    deadline = time.perf_counter() + max(timeout_seconds, 0.0)
    while not done and not stopped() and (left := deadline - time.perf_counter()) > 0:
        cond.wait(left)
    taken = list(done)
    done.clear()
    return taken
