"""The llama.cpp engine: offline batches (`generate`), request streams (`submit`/`collect`/
`cancel_all`) and logits for the quality probe (`score`), on one loaded GGUF.

A background thread runs the continuous batch of `slots.py` on llama.cpp's batch API: one
sequence id per request, new requests admitted into free sequence ids between steps, every token
stamped when its step returns. llama_decode runs without the GIL, so submitting and collecting go
on while it computes. llama-cpp-python's bundled server handles one request at a time (no parallel
slots): the batch API in-process is what decodes many requests at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimizer.backends.base import Generation
from optimizer.backends.completions import check_request, requests_generation, take_completions
from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.errors import LlamaCppError
from optimizer.backends.llamacpp.settings import CONTEXT_GRANULE, LlamaCppSettings
from optimizer.backends.llamacpp.slots import Request, Slots
from optimizer.backends.openmp import release_openmp_threads
from optimizer.measure.serving import Completion

log = logging.getLogger(__name__)

# Tokens per sequence the context is first made for; a longer request re-makes it (when idle).
DEFAULT_SEQUENCE_TOKENS = 256
DEFAULT_RESULT_TIMEOUT_SECONDS = 600.0
# The quality probe's micro-batch, whatever the candidate's n_ubatch: the split changes the logits
# (SmolLM2: up to 1.5, a greedy token flipped), yet candidates that differ only there share one probe
PROBE_UBATCH = 512
_JOIN_SECONDS = 60.0
CLOSED = "the engine was closed"  # what a generate() or collect() waiting on it raises


class LlamaCppEngine:
    """An `Engine` and a `ServingEngine` over one llama.cpp model.

    Args:
        path: The GGUF file to load.
        settings: The candidate's llama.cpp settings.
        threads: llama.cpp's threads (0: its default).
        sequences: Most requests decoded at once (the candidate's batch size); more wait.
        gpu: The CUDA device that holds every layer (None: the CPU alone, on a CPU target).
    """

    def __init__(
        self,
        path: Path,
        settings: LlamaCppSettings,
        threads: int,
        sequences: int,
        *,
        gpu: int | None = None,
        sequence_tokens: int = DEFAULT_SEQUENCE_TOKENS,
        result_timeout_seconds: float = DEFAULT_RESULT_TIMEOUT_SECONDS,
    ) -> None:
        if sequences < 1:
            raise ValueError(f"sequences must be >= 1, got {sequences}")
        self.path = path
        self.settings = settings
        self.threads = threads
        self.sequences = sequences
        self.result_timeout_seconds = result_timeout_seconds
        # before the model loads: more sequences than n_batch raise here, not abort llama.cpp
        self._slots = Slots(sequences, settings.n_batch, reuse_prefix=settings.prefix_sharing)
        self.model: Any = native.load_model(path, gpu)
        self.vocab = native.n_vocab(self.model)
        self.sequence_tokens = _granule(sequence_tokens)
        self._ctx: native.Context | None = None
        self._score_ctx: native.Context | None = None
        self._cond = threading.Condition()
        # held by score() while it uses the model and its own context: close() frees neither under it
        self._score_lock = threading.Lock()
        self._stepping = False
        self._cancelling = False  # cancel_all waits for the step in flight; no next step starts
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._counter = 0
        self._done: collections.deque[Completion] = collections.deque()  # for collect()
        self._own: dict[str, Request | str] = {}  # generate()'s requests: finished, or an error
        self._own_ids: set[str] = set()
        self._cancelled: set[str] = set()  # a timed-out generate()'s running requests, to drop

    def _params(self, sequences: int, sequence_tokens: int, n_batch: int) -> native.ContextParams:
        s = self.settings
        return native.ContextParams(
            sequences, sequence_tokens, n_batch, s.n_ubatch, self.threads, s.kv_type, s.flash_attention
        )

    def reserve(self, sequence_tokens: int) -> None:
        """Room for requests of `sequence_tokens` (prompt + output) tokens; re-makes the context
        when it is smaller (only while no request runs)."""
        with self._cond:
            if self.model is None:
                raise RuntimeError("the engine is closed")
            if self._ctx is not None and sequence_tokens <= self.sequence_tokens:
                return
            if self._slots.busy or self._stepping:
                raise RuntimeError("cannot resize the llama.cpp context while requests run")
            size = max(self.sequence_tokens, _granule(sequence_tokens))
            if self._ctx is not None:
                log.info("re-making the llama.cpp context for %d tokens per sequence", size)
                self._ctx.close()
                self._ctx = None
                self._slots.cached.clear()  # the new context holds no cells: nothing to match
            params = self._params(self.sequences, size, self.settings.n_batch)
            self._ctx = native.Context(self.model, self.vocab, params)
            # only a size that was made is kept: a failed one (out of memory) was retried by
            # every later request, however small, and the engine never served again
            self.sequence_tokens = size

    # -- offline batches ------------------------------------------------------------------------

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        """Greedy-decode exactly `max_new_tokens` for each row of `prompt_ids` [batch, tokens]
        (EOS ignored). Rows are requests submitted together; a request's TTFT runs from the
        submission to its first token."""
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
            raise ValueError(f"prompt_ids must be [batch, tokens], got shape {tuple(prompt_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        rows = prompt_ids.tolist()
        for row in rows:  # before any is submitted: a bad row's refusal left the others running
            self._check(row, max_new_tokens)
        self.reserve(len(rows[0]) + max_new_tokens)
        start = time.perf_counter()
        ids = [self._submit(row, max_new_tokens, own=True) for row in rows]
        requests = self._wait_own(ids)
        total = time.perf_counter() - start
        return requests_generation([r.tokens for r in requests], [r.times for r in requests], start, total)

    def _wait_own(self, ids: list[str]) -> list[Request]:
        deadline = time.monotonic() + self.result_timeout_seconds
        with self._cond:
            try:
                while not all(i in self._own for i in ids):
                    if self._stopped:  # close() ends the loop: what is left never finishes
                        raise RuntimeError(CLOSED)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"llama.cpp returned no result for {self.result_timeout_seconds} s"
                        )
                    self._cond.wait(left)
            except BaseException:  # (a timeout, a Ctrl-C) nobody collects these results
                self._forget(ids)
                raise
            results = [self._own.pop(i) for i in ids]
            self._own_ids.difference_update(ids)
        for result in results:
            if isinstance(result, str):
                raise LlamaCppError(result)
        return [r for r in results if isinstance(r, Request)]

    def _forget(self, ids: list[str]) -> None:
        """Cancel requests of a generate() that gave up (under the lock): left running, they held
        their slots (a later call timed out behind them, reserve() refused) and piled their results
        up in `_own`. A running one may be in the step in flight: the loop thread drops it."""
        gone = set(ids)
        self._own_ids -= gone
        for request_id in gone:
            self._own.pop(request_id, None)
        kept = [r for r in self._slots.waiting if r.request_id not in gone]
        self._slots.waiting.clear()
        self._slots.waiting.extend(kept)
        self._cancelled.update(r.request_id for r in self._slots.active.values() if r.request_id in gone)
        self._cond.notify_all()

    def _drop_cancelled(self) -> None:
        """Free the slots of cancelled requests (between steps, under the lock); admitting into a
        slot with no cached prefix trims all its cells."""
        for slot, r in list(self._slots.active.items()):
            if r.request_id in self._cancelled:
                del self._slots.active[slot]
        self._cancelled.clear()  # the rest finished in the last step: `_finish` dropped them

    # -- ServingEngine: requests of a stream ------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        return self._submit(prompt_ids, max_new_tokens, own=False)

    def _submit(self, prompt_ids: Sequence[int], max_new_tokens: int, own: bool) -> str:
        self._check(prompt_ids, max_new_tokens)
        if len(prompt_ids) + max_new_tokens > self.sequence_tokens or self._ctx is None:
            self.reserve(len(prompt_ids) + max_new_tokens)  # raises while requests run
        with self._cond:
            if self._stopped or self.model is None:
                raise RuntimeError("the engine is closed")
            self._counter += 1
            request_id = f"l{self._counter}"
            if own:
                self._own_ids.add(request_id)
            self._slots.waiting.append(Request(request_id, tuple(prompt_ids), max_new_tokens))
            self._start_thread()
            self._cond.notify_all()
        return request_id

    def _check(self, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
        # a request of no new token would never finish (its slot never freed); a token outside
        # the vocabulary would fail llama_decode's whole step
        check_request(prompt_ids, max_new_tokens, self.vocab)

    def collect(self, timeout_seconds: float) -> list[Completion]:
        with self._cond:
            done = take_completions(self._cond, self._done, lambda: self._stopped, timeout_seconds)
            if not done and self._stopped:  # an empty list at once would have its caller spin
                raise RuntimeError(CLOSED)
            return done

    def cancel_all(self) -> None:
        with self._cond:
            self._slots.waiting.clear()
            # the step in flight finishes (its results are dropped) and no next one starts: the
            # loop thread took the lock back before this one woke, so waiting on `_stepping` alone
            # let the running requests decode to their last token (a stream's give-up time, and so
            # its given-up requests' TTFT, then counted all of that)
            self._cancelling = True
            try:
                while self._stepping:
                    self._cond.wait(0.1)
                self._slots.drop_all()
                self._done.clear()
                if self._ctx is not None:
                    self._ctx.clear()
            finally:
                self._cancelling = False
                self._cond.notify_all()

    def first_token_times(self) -> dict[str, float | None]:
        """Each unfinished stream request's first token time, None while it has none (waiting,
        or its prompt still being fed)."""
        with self._cond:
            # the step in flight runs without the lock: it appends to `times` and drops finished
            # requests from `active`, each an atomic operation under the GIL, as is this copy
            requests = [*self._slots.waiting, *self._slots.active.values()]
            return {
                r.request_id: r.times[0] if r.times else None
                for r in requests
                if r.request_id not in self._own_ids
            }

    def forget_cached_prefixes(self) -> None:
        """Start the next run of a stream with no prefix cached: a free slot keeps its cells for
        later matches, so a repeated run would find its own prompts from the run before and
        measure a reuse no fresh deployment sees. The counters go on."""
        with self._cond:
            if self._slots.busy or self._stepping:
                return
            self._slots.cached.clear()
            if self._ctx is not None:
                self._ctx.clear()

    def prefix_counters(self) -> dict[str, float]:
        """Prefix reuse so far (prefix_sharing): prompt tokens submitted, and those found cached.
        Empty without sharing, as the torch backends: no prefix cache was measured."""
        return self._slots.prefix.as_dict() if self.settings.prefix_sharing else {}

    def _start_thread(self) -> None:
        if self._thread is None:
            # the loop thread computes: the caller's idle OpenMP team must not keep the cores
            release_openmp_threads()
            self._thread = threading.Thread(target=self._loop, name="wattsmith-llamacpp", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._cancelling or not self._slots.busy):
                    self._cond.wait()
                if self._stopped:
                    return
                ctx = self._ctx
                assert ctx is not None
                self._drop_cancelled()
                self._slots.admit(ctx.trim, ctx.copy)
                self._stepping = True
            error = None
            try:
                finished = self._slots.step(ctx.decode, time.perf_counter)
            except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the thread
                error = f"{type(exc).__name__}: {exc}"
            with self._cond:
                if error is not None:  # under the lock: a request submitted meanwhile is failed too
                    finished = self._slots.drop_all()
                    ctx.clear()
                self._stepping = False
                for r in finished:
                    self._finish(r, error)
                self._cond.notify_all()

    def _finish(self, r: Request, error: str | None) -> None:
        if r.request_id in self._cancelled:
            return  # its generate() gave up; not a stream's either
        if r.request_id in self._own_ids:
            self._own[r.request_id] = error if error is not None else r
        else:
            tokens = () if error else tuple(r.tokens)
            self._done.append(Completion(r.request_id, tokens, () if error else tuple(r.times), error))

    # -- quality ---------------------------------------------------------------------------------

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, tokens, vocab] (float32, CPU): each row one llama_decode with
        every position an output, through the candidate's weights, KV cache type and attention."""
        with self._score_lock:  # not the loop's lock: a probe must not stall a stream's steps
            return self._score(token_ids)

    def _score(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("the engine is closed")
        length = int(token_ids.shape[1])
        ctx = self._score_ctx
        if ctx is None or ctx.params.n_batch < length:
            if ctx is not None:
                ctx.close()
            params = dataclasses.replace(
                self._params(1, _granule(length), _granule(length)), n_ubatch=PROBE_UBATCH
            )
            ctx = self._score_ctx = native.Context(self.model, self.vocab, params)
        rows = []
        for row in token_ids.tolist():
            ctx.clear()
            rows.append(ctx.decode(row, range(length), [0] * length, [True] * length).copy())
        return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))

    def close(self) -> None:
        """Stop the loop thread, free the contexts and the model; a generate() or collect() waiting
        raises at once. Safe to call twice."""
        with self._cond:
            self._stopped = True
            self._slots.waiting.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=_JOIN_SECONDS)
            if thread.is_alive():
                log.warning("the llama.cpp loop thread did not stop within %s s", _JOIN_SECONDS)
                return  # freeing what it decodes with would crash the process
        # taken under the lock: the generate() woken above may close() too while this one joins,
        # and a context or model freed twice crashes the process; and after a score() in flight
        # (another thread's probe), which decodes on the model and its own context
        with self._score_lock, self._cond:
            contexts, model = (self._ctx, self._score_ctx), self.model
            self._ctx = self._score_ctx = self.model = None
            self._thread = None
        for ctx in contexts:
            if ctx is not None:
                ctx.close()
        if model is not None:
            native.free_model(model)


def _granule(tokens: int) -> int:
    return max(1, math.ceil(tokens / CONTEXT_GRANULE)) * CONTEXT_GRANULE
