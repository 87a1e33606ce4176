"""A request stream served by a lockstep engine: a queue in front of `generate()` (static batching).

Whenever the engine is free, the requests waiting (up to `max_batch` of them) are generated
together as one batch, every row to the longest output asked for in it: a short request waits for
the batch's longest one, and requests that arrive meanwhile wait for the next batch. This is what
deploying a batch engine behind a queue does, and what continuous batching improves on.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optimizer.backends.base import Engine, Generation
from optimizer.backends.completions import take_completions
from optimizer.backends.openmp import release_openmp_threads
from optimizer.measure.serving import Completion


@dataclass(frozen=True)
class _Queued:
    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int


class QueuedServer:
    """A `ServingEngine` over any `Engine`. Prompts of different lengths in one batch need the
    engine's `generate_padded`; without it the batch is one request."""

    def __init__(self, engine: Engine, max_batch: int) -> None:
        self.engine = engine
        self.padded = hasattr(engine, "generate_padded")
        self.max_batch = max_batch if self.padded else 1
        self._queue: collections.deque[_Queued] = collections.deque()
        self._done: collections.deque[Completion] = collections.deque()
        self._lock = threading.Condition()
        self._busy = False
        self._stopped = False
        self._counter = 0
        # the serving thread runs the model: the caller's idle OpenMP team must not keep the cores
        # (released now, before that thread computes: a release while it does slows it down)
        release_openmp_threads()
        self._thread = threading.Thread(target=self._serve, name="wattsmith-queued-server", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the queued server is closed")
            self._counter += 1
            request_id = f"q{self._counter}"
            self._queue.append(_Queued(request_id, tuple(prompt_ids), max_new_tokens))
            self._lock.notify_all()
        return request_id

    def collect(self, timeout_seconds: float) -> list[Completion]:
        with self._lock:
            return take_completions(self._lock, self._done, lambda: self._stopped, timeout_seconds)

    def first_token_times(self) -> dict[str, float | None]:
        """The queued requests, which have no token yet (the batch in flight stamps its tokens
        only when it returns: its requests are not told)."""
        with self._lock:
            return {r.request_id: None for r in self._queue}

    def cancel_all(self) -> None:
        with self._lock:
            self._queue.clear()
            while self._busy:  # the batch in flight finishes; its results are dropped
                self._lock.wait(0.1)
            self._done.clear()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._queue.clear()
            self._lock.notify_all()
        self._thread.join(timeout=60)

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._busy = True
            try:
                completions = self._generate(batch)
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the thread
                completions = [
                    Completion(r.request_id, (), (), f"{type(exc).__name__}: {exc}") for r in batch
                ]
            with self._lock:
                self._busy = False
                self._done.extend(completions)
                self._lock.notify_all()

    def _generate(self, batch: list[_Queued]) -> list[Completion]:
        import torch

        longest = max(r.max_new_tokens for r in batch)
        start = time.perf_counter()
        engine: Any = self.engine
        if len({len(r.prompt_ids) for r in batch}) == 1:
            generation = engine.generate(torch.tensor([r.prompt_ids for r in batch]), longest)
        else:
            generation = engine.generate_padded([r.prompt_ids for r in batch], longest)
        times = step_times(generation, start)
        tokens = generation.token_ids.tolist() if generation.token_ids is not None else [[]] * len(batch)
        return [
            Completion(r.request_id, tuple(row[: r.max_new_tokens]), times[: r.max_new_tokens])
            for r, row in zip(batch, tokens, strict=True)
        ]


def step_times(generation: Generation, start: float) -> tuple[float, ...]:
    """When each step's tokens were ready: the engine's stamps, or the first token at TTFT and
    the rest evenly over the decode (an engine that does not stamp its steps)."""
    if generation.token_times is not None and len(generation.token_times) == generation.new_tokens:
        return generation.token_times
    first = start + generation.ttft_seconds
    return tuple(first + i * generation.tpot_seconds for i in range(generation.new_tokens))


def serving_engine(engine: Engine, batch_size: int, longest_request_tokens: int) -> Any:
    """The engine as a `ServingEngine`: its own (continuous batching, a server), sized for the
    stream's longest request, or a queue in front of it. The caller closes what it gets back
    when it is a QueuedServer."""
    if hasattr(engine, "submit"):
        reserve = getattr(engine, "reserve", None)
        if reserve is not None:
            reserve(longest_request_tokens)
        return engine
    return QueuedServer(engine, batch_size)
