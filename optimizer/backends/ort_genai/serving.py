"""A request stream served by onnxruntime-genai's own scheduler: its `Engine` / `Request` API.

Each submitted request becomes an `og.Request` with one greedy turn of exactly `max_new_tokens`
(`TurnOptions` min = max generated tokens: EOS never ends it early), and a loop thread calls
`Engine.run()`, which schedules, prefills and decodes whatever requests genai admits and returns
one event per produced token. A token's time is when the step that produced it returned.

genai requires every Engine operation (create, begin_turn, run, cancel) on the thread that made
the Engine, so that thread does all of it: `submit` only queues the prompt. `run()` releases the
GIL while the model computes, so submissions and the load generator go on meanwhile.

What genai schedules depends on the build. A model with a paged KV cache (the builder's
`use_paged_attention`, CUDA fp16/bf16 or WebGPU only) gets dynamic batching: requests join and
leave the running batch at every step. Any other build, every CPU build among them, gets genai's
*static* batch scheduler (onnxruntime-genai 0.18, `StaticBatchScheduler`): up to 4 waiting
requests start together (4 is a constant of its scheduler: `engine.static_batching.max_batch_size`
in the config changes what `get_capabilities()` reports, not the batch), prompts of any lengths,
each stops at its own length, and requests that arrive meanwhile wait until the whole batch has
finished. A smaller limit is ours: no more than `max_requests` requests are handed to genai.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.backends.completions import check_request, take_completions
from optimizer.backends.openmp import release_openmp_threads
from optimizer.measure.serving import Completion

_START_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 60.0
_TOKEN, _TURN_FINISHED, _FAILED = 1, 2, 8  # EngineEventFlags bits


@dataclass
class _Queued:
    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int


@dataclass
class _Running:
    queued: _Queued
    request: Any  # og.Request
    turn_id: int
    turn_options: Any  # og.TurnOptions, kept alive as long as its turn
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class GenaiEngineServer:
    """A `ServingEngine` over onnxruntime-genai's `Engine` for one loaded `og.Model`.

    Args:
        og: The onnxruntime_genai module.
        model: The loaded `og.Model`.
        max_requests: The most requests handed to genai at once (the others wait here); more
            than genai's own batch (`get_capabilities().configured_max_batch_size`) fails.
        vocab_size: The model's vocabulary: a prompt token outside it is refused at submit
            (None: not checked).
    """

    def __init__(self, og: Any, model: Any, max_requests: int, vocab_size: int | None = None) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self._og = og
        self.max_requests = max_requests
        self.vocab_size = vocab_size
        self.capabilities: dict[str, int] = {}
        self.most_running = 0  # the most requests that produced a token in one step
        self._inbox: collections.deque[_Queued] = collections.deque()
        self._done: collections.deque[Completion] = collections.deque()
        self._lock = threading.Condition()
        # requests handed to genai and not finished: their first token's time, None before it
        self._handed: dict[str, float | None] = {}
        self._cancel = False
        self._stopped = False
        self._counter = 0
        self._failure: BaseException | None = None
        self._started = threading.Event()
        # the loop thread computes: the caller's idle OpenMP team must not keep the cores
        release_openmp_threads()
        self._thread = threading.Thread(
            target=self._loop, args=(model,), name="wattsmith-genai-engine", daemon=True
        )
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_SECONDS):
            raise RuntimeError(f"the onnxruntime-genai Engine did not start in {_START_TIMEOUT_SECONDS} s")
        if self._failure is not None:
            raise RuntimeError(f"the onnxruntime-genai Engine failed to start: {self._failure}") from (
                self._failure
            )

    # -- ServingEngine -------------------------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        check_request(prompt_ids, max_new_tokens, self.vocab_size)
        with self._lock:
            self._raise_if_down()
            self._counter += 1
            request_id = f"g{self._counter}"
            self._inbox.append(_Queued(request_id, tuple(int(t) for t in prompt_ids), max_new_tokens))
            self._lock.notify_all()
        return request_id

    def collect(self, timeout_seconds: float) -> list[Completion]:
        with self._lock:
            # a failed loop finishes nothing more either: its failure is raised at once
            done = take_completions(self._lock, self._done, self._down, timeout_seconds)
            if not done:
                self._raise_if_down()
        return done

    def first_token_times(self) -> dict[str, float | None]:
        """Every unfinished request: its first token's time, or None (waiting here or in genai)."""
        with self._lock:
            return {q.request_id: None for q in self._inbox} | self._handed

    def cancel_all(self) -> None:
        """Cancel every queued and running request; returns once genai has none left."""
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        with self._lock:
            self._inbox.clear()
            self._cancel = True
            self._lock.notify_all()
            while (
                self._cancel and not self._stopped and self._failure is None and time.monotonic() < deadline
            ):
                self._lock.wait(0.1)
            self._done.clear()
            if self._cancel:
                self._raise_if_down()
                raise TimeoutError(
                    f"onnxruntime-genai did not drop its requests in {_STOP_TIMEOUT_SECONDS} s"
                )

    def close(self) -> None:
        """Stop the loop thread (its requests are cancelled and the Engine freed there)."""
        with self._lock:
            self._stopped = True
            self._inbox.clear()
            self._lock.notify_all()
        self._thread.join(timeout=_STOP_TIMEOUT_SECONDS)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._inbox and not self._handed

    def _down(self) -> bool:
        return self._stopped or self._failure is not None

    def _raise_if_down(self) -> None:
        if self._failure is not None:
            raise RuntimeError(
                f"the onnxruntime-genai Engine loop failed: {self._failure}"
            ) from self._failure
        if self._stopped:
            raise RuntimeError("the onnxruntime-genai Engine server is closed")

    # -- the loop thread: it owns the og.Engine ------------------------------------------------

    def _loop(self, model: Any) -> None:
        og = self._og
        try:
            engine = og.Engine(model)
            caps = engine.get_capabilities()
            self.capabilities = {
                "configured_max_batch_size": int(caps.configured_max_batch_size),
                "max_request_length": int(caps.max_request_length),
                "max_scheduled_tokens": int(caps.max_scheduled_tokens),
            }
            if self.max_requests > caps.configured_max_batch_size:
                raise RuntimeError(
                    f"the Engine runs at most {caps.configured_max_batch_size} requests at once, "
                    f"not the {self.max_requests} asked for"
                )
            # room for a token of every request of a step, and their finish events
            buffer = engine.create_event_buffer(max(64, 4 * self.max_requests))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller by __init__
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        running: dict[int, _Running] = {}
        try:
            while True:
                with self._lock:
                    while not self._inbox and not running and not self._cancel and not self._stopped:
                        self._lock.wait()
                    if self._stopped or self._cancel:
                        self._drop(engine, buffer, running)
                        self._cancel = False
                        self._lock.notify_all()
                        if self._stopped:
                            return
                        continue
                    admitted: list[_Queued] = []
                    while self._inbox and len(running) + len(admitted) < self.max_requests:
                        admitted.append(self._inbox.popleft())
                        self._handed[admitted[-1].request_id] = None
                refused = []
                for queued in admitted:
                    try:
                        state = self._begin(engine, queued)
                    except Exception as exc:  # noqa: BLE001 - genai refused this request, not the others
                        refused.append(Completion(queued.request_id, (), (), f"{type(exc).__name__}: {exc}"))
                        continue
                    running[id(state.request)] = state
                if refused:
                    with self._lock:
                        for completion in refused:
                            del self._handed[completion.request_id]
                        self._done.extend(refused)
                        self._lock.notify_all()
                if engine.has_pending_requests():
                    self._step(engine, buffer, running)
                elif running:
                    raise RuntimeError(
                        f"the Engine has no pending requests but {len(running)} never finished"
                    )
        except BaseException as exc:  # noqa: BLE001 - every caller's next call raises it
            with self._lock:
                self._failure = exc
                # none of them will ever finish: first_token_times() and idle must not tell them
                self._handed.clear()
                self._inbox.clear()
                self._lock.notify_all()
        finally:
            for state in running.values():
                state.request.close()
            running.clear()
            del buffer, engine  # on this thread: genai frees its cache here

    def _begin(self, engine: Any, queued: _Queued) -> _Running:
        og = self._og
        options = og.RequestOptions()
        # the request's cache is sized for what it needs, not the model's whole context
        options.set_max_session_tokens(len(queued.prompt_ids) + queued.max_new_tokens)
        request = engine.create_request(options=options)
        turn = og.TurnOptions(request)
        turn.set_do_sample(False)
        turn.set_max_generated_tokens(queued.max_new_tokens)
        turn.set_min_generated_tokens(queued.max_new_tokens)  # EOS masked: exactly this many
        turn_id = request.begin_turn(np.asarray(queued.prompt_ids, dtype=np.int32), turn)
        return _Running(queued, request, turn_id, turn)

    def _step(self, engine: Any, buffer: Any, running: dict[int, _Running]) -> None:
        events = engine.run(buffer)
        # stamped under the lock that first_token_times takes: a request it tells has no token
        # had none when it asked
        with self._lock:
            ended = self._take_events(events, running, time.perf_counter())
        for state in ended:
            state.request.close()

    def _take_events(self, events: Any, running: dict[int, _Running], now: float) -> list[_Running]:
        """Publish the step's tokens and finished requests (lock held); returns the finished."""
        ended: list[_Running] = []
        finished: list[Completion] = []
        producing = 0
        for index in range(len(events)):
            event = events[index]
            state = running.get(id(event.request))
            if state is None or state.request is not event.request:
                continue
            flags = int(event.flags.value)
            request_id = state.queued.request_id
            if flags & _TOKEN:
                state.tokens.append(int(event.token))
                state.times.append(now)
                self._handed[request_id] = state.times[0]
                producing += 1
            if flags & (_TURN_FINISHED | _FAILED):
                finished.append(_completion(state, event, flags))
                del running[id(state.request)]
                del self._handed[request_id]
                ended.append(state)
        self.most_running = max(self.most_running, producing)
        if finished:
            self._done.extend(finished)
            self._lock.notify_all()
        return ended

    def _drop(self, engine: Any, buffer: Any, running: dict[int, _Running]) -> None:
        """Cancel every running request and run the engine until it has none (lock held: the
        caller waits for this anyway)."""
        for state in running.values():
            state.request.cancel_turn(state.turn_id)
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        while engine.has_pending_requests() and time.monotonic() < deadline:
            engine.run(buffer)  # the cancelled turns' finish events
        for state in running.values():
            state.request.close()
        running.clear()
        self._handed.clear()


def _completion(state: _Running, event: Any, flags: int) -> Completion:
    queued = state.queued
    error = None
    reason = getattr(event.finish_reason, "name", str(event.finish_reason))
    if flags & _FAILED:
        error = (
            f"onnxruntime-genai failed the request ({getattr(event.error_code, 'name', event.error_code)})"
        )
    elif reason != "MAX_GENERATED_TOKENS" or len(state.tokens) != queued.max_new_tokens:
        error = f"finished ({reason}) after {len(state.tokens)} of {queued.max_new_tokens} tokens"
    return Completion(queued.request_id, tuple(state.tokens), tuple(state.times), error)
