"""loop=slots as an `Engine`: an offline batch served as requests submitted together, and what
generate() says when they do not all finish."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from optimizer.backends.base import Generation
from optimizer.backends.completions import requests_generation
from optimizer.backends.torch.slot_requests import check_request
from optimizer.measure.serving import Completion

if TYPE_CHECKING:
    from optimizer.backends.torch.slot_server import SlotEngine

RESULT_TIMEOUT_SECONDS = 600.0  # generate() fails when no request finishes for this long


def generate_batch(engine: SlotEngine, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
    """Each row one request, all submitted together (TTFT from submission, queueing included).
    The caller runs one at a time: each takes every completion there is."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be [batch, tokens], got shape {tuple(prompt_ids.shape)}")
    rows = prompt_ids.tolist()
    for row in rows:  # before any is submitted: a bad row's refusal left the others running
        check_request(row, max_new_tokens, engine.vocab)
    engine.reserve(prompt_ids.shape[1] + max_new_tokens)
    start = time.perf_counter()
    ids = [engine.submit(row, max_new_tokens) for row in rows]
    finished: dict[str, Completion] = {}
    last_progress = time.perf_counter()
    try:
        while len(finished) < len(ids):
            # read before the take: a loop that dies leaves its requests' errors to take, and a
            # take that timed out just before would miss them
            stopped = engine.stop_reason()
            taken = engine.collect(0.0 if stopped else 1.0)
            for completion in taken:
                if completion.error is not None:
                    raise RuntimeError(f"request {completion.request_id} failed: {completion.error}")
                finished[completion.request_id] = completion
            if taken:
                last_progress = time.perf_counter()
            elif stopped:
                raise RuntimeError(f"{stopped}: finished {len(finished)} of {len(ids)} requests")
            elif time.perf_counter() - last_progress > RESULT_TIMEOUT_SECONDS:
                raise RuntimeError(f"the slot engine finished {len(finished)} of {len(ids)} requests")
    except BaseException:  # its other rows would hold slots and their results reach the next call
        engine.cancel_all()
        raise
    total = time.perf_counter() - start
    done = [finished[i] for i in ids]
    return requests_generation([c.token_ids for c in done], [c.token_times for c in done], start, total)
