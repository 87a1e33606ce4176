"""For engines that run their own loop thread (the queue in front of lockstep engines, llama.cpp's
batch, genai's Engine, the slot loop): one way to wait for finished requests, one way to report
an offline batch they served as requests, and one check of a request before it reaches the loop."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

from optimizer.backends.base import Generation
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


def requests_generation(
    token_ids: Sequence[Sequence[int]], token_times: Sequence[Sequence[float]], start: float, total: float
) -> Generation:
    """An offline batch served as requests submitted together at `start` (perf_counter): each
    request's TTFT runs from `start` to its first token, its TPOT is the mean gap between its
    tokens; the batch's TTFT is the latest first token (as a lockstep prefill's), and each step's
    time the moment every request had that token."""
    import torch

    latencies = tuple(
        (times[0] - start, (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0)
        for times in token_times
    )
    new_tokens = len(token_ids[0])
    return Generation(
        batch_size=len(token_ids),
        new_tokens=new_tokens,
        ttft_seconds=max(ttft for ttft, _ in latencies),
        total_seconds=total,
        token_ids=torch.tensor([list(row) for row in token_ids], dtype=torch.int64),
        request_latencies=latencies,
        token_times=tuple(max(times[k] for times in token_times) for k in range(new_tokens)),
    )


def check_request(prompt_ids: Sequence[int], max_new_tokens: int, vocab_size: int | None) -> None:
    """Refuse, in the caller's thread, a request an engine's loop would mishandle: no new token
    (it would finish with none, or never), an empty prompt, or a token id outside the vocabulary
    (`None`: not checked), which fails the whole step (innocent requests too) or, negative, is
    read as another token by an ONNX Gather."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(prompt_ids) == 0:
        raise ValueError("a request needs at least one prompt token")
    if vocab_size is not None:
        bad = next((int(t) for t in prompt_ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the model's vocabulary of {vocab_size}")
