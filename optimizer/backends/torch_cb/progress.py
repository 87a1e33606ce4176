"""What transformers' continuous-batching manager knows of the stream requests it has not finished:
their first token's time, for a serving run that gives up on them (`first_token_times`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def first_token_times(manager: Any, request_ids: Iterable[str]) -> dict[str, float | None]:
    """Each of `request_ids` still queued, waiting or running: its first token's time
    (perf_counter, as the completions' timestamps), or None while it has none. Left out: those
    finished (their result is queued for `collect`) and those whose state is not where we look.

    Read while the loop thread runs, without pausing it: every read is one atomic operation under
    the GIL, and a token is stamped before it counts, so a request told None had none when asked.
    """
    scheduler = getattr(getattr(manager, "batch_processor", None), "scheduler", None)
    inbox = getattr(manager, "input_queue", None)
    if scheduler is None or inbox is None:
        return {}
    # before the scheduler: a request taken from the inbox meanwhile is found there
    with inbox.mutex:
        queued = {state.request_id for state in inbox.queue}
    told: dict[str, float | None] = {}
    for request_id in request_ids:
        # waiting before active: a request enters active before it leaves waiting
        state = scheduler.waiting_requests.get(request_id) or scheduler.active_requests.get(request_id)
        if state is not None:
            # a soft reset (its cache given up) restarts the request and its timestamps: when its
            # first token came is lost, and None would claim it had none
            if getattr(state, "_true_initial_tokens", 0):
                continue
            stamps = getattr(state, "timestamps", None)  # None: not recorded, nothing known
            if stamps is not None:
                told[request_id] = stamps[0] if stamps else None
        elif request_id in queued:
            told[request_id] = None
    return told
