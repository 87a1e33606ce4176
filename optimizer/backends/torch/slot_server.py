"""loop=slots: continuous admission over the slot decoder, as an `Engine` and a `ServingEngine`.

A loop thread owns the device. Between decode steps it admits waiting requests into free slots (one
prefill for those that arrived together, at most `max_prefill_tokens` of padded prompt), then runs
one step of the busy slots (kept at the front; the smallest step size that holds them, a captured
CUDA graph on a GPU), reads the step's tokens and retires the requests that have all of theirs,
freeing their slots at once. A request never waits for another's answer to end (static batching
behind a queue does), and a step costs what a lockstep step of that many rows costs:
transformers' paged continuous batching instead runs eager Python per step and packs every
request's keys into one masked product.

With prefix sharing, a finished request's K/V (prompt and outputs) is copied into a store of as
many regions again as there are slots, and a new request's prompt is matched against the store and
the running slots: the longest cached prefix is copied into its slot and only the rest of the
prompt is prefilled (slot_prefixes.py).

The slots' regions are sized for the longest request announced (`reserve`, or a longer request
when it arrives): growing waits for the requests in flight to finish, then rebuilds (and
re-captures) the decoder, so a stream is reserved for before it starts.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from optimizer.backends.base import Generation
from optimizer.backends.completions import take_completions
from optimizer.backends.openmp import release_openmp_threads
from optimizer.backends.prefixes import PrefixCounts
from optimizer.backends.torch.slot_admission import admit
from optimizer.backends.torch.slot_decoder import SlotDecoder
from optimizer.backends.torch.slot_generate import generate_batch
from optimizer.backends.torch.slot_prefixes import CachedPrefixes
from optimizer.backends.torch.slot_requests import (
    Admission,
    SlotRequest,
    SlotTable,
    check_request,
    slot_size,
)
from optimizer.measure.serving import Completion

log = logging.getLogger(__name__)

DEFAULT_MAX_PREFILL_TOKENS = 4096  # padded prompt tokens admitted in one prefill


class SlotEngine:
    """Args:
    hf_model: A loaded HF causal LM on `device`.
    slots: Requests decoded together (the candidate's batch size); more wait for a free slot.
    device: Where the model lives; on CUDA the step is captured as a graph.
    compiled: Compile the step and the prefills with inductor first.
    compile_layers: With `compiled`, compile one decoder layer for all (compiling.py).
    max_prefill_tokens: Padded prompt tokens admitted in one prefill (at least one request).
    step_interval_seconds: The least time from one step's start to the next (0: back to back).
        A decode step reads every weight whatever its rows, so at a given arrival rate fewer,
        fuller steps spend less energy per token, paid for in TPOT (and in slots: requests stay
        in flight longer).
    key_span_step: The granularity of the key spans a step attends (the decoder's default per
        device; 0: every step attends to the whole region, as before spans).
    prefix_sharing: Keep finished requests' K/V (a store of `slots` more regions) and prefill
        only what a new prompt does not share with them or with a running request.
    """

    def __init__(
        self,
        hf_model: Any,
        slots: int,
        device: torch.device | str,
        *,
        compiled: bool = False,
        compile_layers: bool = False,
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
        step_interval_seconds: float = 0.0,
        key_span_step: int | None = None,
        prefix_sharing: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.step_interval_seconds = step_interval_seconds
        self._next_step_at = 0.0
        self.model: Any = hf_model
        self.vocab = int(hf_model.get_input_embeddings().weight.shape[0])  # the ids it can embed
        self.slots = slots
        self.device = torch.device(device)
        # how each decoder (one per region size) is built
        self._decoder_options: dict[str, Any] = {
            "compiled": compiled,
            "key_span_step": key_span_step,
            "compile_layers": compile_layers,
        }
        self.max_prefill_tokens = max_prefill_tokens
        self.prefix_sharing = prefix_sharing
        self.decoder: SlotDecoder | None = None
        self.prefixes: CachedPrefixes | None = None  # with prefix sharing: what each cache row holds
        self._prefix_counts = PrefixCounts()  # over the engine's life, rebuilds included
        self._wanted_tokens = 0  # nothing is built before a request or a reserve() asks for a size
        self._waiting: collections.deque[SlotRequest] = collections.deque()
        self._running: dict[int, SlotRequest] = {}  # slot -> request
        self._table = SlotTable(slots)  # what the running requests have produced
        self._done: collections.deque[Completion] = collections.deque()
        self._cond = threading.Condition()
        self._device_lock = threading.Lock()  # the loop's device work, and score() between steps
        self._stopped = False
        self._closed = False  # stopped by close(): the loop thread, once it ends, drops the model
        self._stop_reason: str | None = None  # why it stopped: closed, or the loop thread's error
        self._generate_lock = threading.Lock()
        self._cancel = False
        self._build_error: BaseException | None = None
        self._counter = 0
        release_openmp_threads()  # the loop thread computes: the caller's idle team must not hold cores
        self._thread = threading.Thread(target=self._serve, name="wattsmith-slot-server", daemon=True)
        self._thread.start()

    # -- ServingEngine -------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        check_request(prompt_ids, max_new_tokens, self.vocab)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the slot engine is closed")
            self._counter += 1
            request = SlotRequest(f"s{self._counter}", tuple(prompt_ids), max_new_tokens)
            self._wanted_tokens = max(self._wanted_tokens, slot_size(request.sequence_tokens))
            self._waiting.append(request)
            self._cond.notify_all()
        return request.request_id

    def collect(self, timeout_seconds: float) -> list[Completion]:
        with self._cond:
            return take_completions(self._cond, self._done, lambda: self._stopped, timeout_seconds)

    def cancel_all(self) -> None:
        with self._cond:
            self._cancel = True
            self._cond.notify_all()
            while self._cancel and not self._stopped:
                self._cond.wait(0.1)
            self._done.clear()

    def first_token_times(self) -> dict[str, float | None]:
        """Each unfinished request's first token time (None: no token yet), read between steps."""
        with self._cond:
            return self._table.first_times(self._running, self._waiting)

    def reserve(self, sequence_tokens: int) -> SlotEngine:
        """Slots with room for requests of `sequence_tokens` (prompt + new) tokens, built now."""
        with self._cond:
            self._wanted_tokens = max(self._wanted_tokens, slot_size(sequence_tokens))
            self._build_error = None
            self._cond.notify_all()
            while not self._stopped and (
                self.decoder is None or self.decoder.max_sequence_tokens < self._wanted_tokens
            ):
                if self._build_error is not None:
                    error = self._build_error
                    raise RuntimeError(f"building the slot decoder failed: {error}") from error
                self._cond.wait(0.1)
        return self

    def forget_cached_prefixes(self) -> None:
        """Start the next run of a stream with no prefix cached: a repeated run would otherwise
        find its own prompts from the run before, a reuse no fresh deployment sees. Only while
        idle (between runs); the counters go on."""
        with self._cond:
            if self.prefixes is not None and not (self._running or self._waiting):
                self.prefixes.forget()

    def prefix_counters(self) -> dict[str, float]:
        """Prefix reuse so far (prefix_sharing): prompt tokens admitted, and those found cached."""
        with self._cond:
            return self._prefix_counts.as_dict() if self.prefix_sharing else {}

    # -- Engine --------------------------------------------------------------------------------
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        """Each row one request, all submitted together (slot_generate.py). One at a time: each
        takes every completion there is, another's rows included."""
        with self._generate_lock:
            return generate_batch(self, prompt_ids, max_new_tokens)

    def stop_reason(self) -> str | None:
        """Why the engine stopped (None while it serves): closed, or its loop thread's error."""
        with self._cond:
            return self._stop_reason

    @torch.inference_mode()
    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        with self._device_lock:  # read under it: close() drops the model under it
            if self.model is None:
                raise RuntimeError("the slot engine is closed")
            return self.model(input_ids=token_ids.to(self.device)).logits.float().cpu()

    def close(self) -> None:
        with self._cond:
            self._stopped = self._closed = True
            self._stop_reason = self._stop_reason or "the slot engine was closed"
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join(timeout=60)
        if not self._thread.is_alive():  # else a step or a build outlasted the join: the loop drops them
            self._drop_state()

    def _drop_state(self) -> None:
        """The model and the regions go: once the loop thread has ended, never under its step."""
        with self._device_lock, self._cond:  # score() reads the model under the device lock
            self.decoder = self.prefixes = self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the loop thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._serve_requests()
        except BaseException as exc:  # noqa: BLE001 - a dead loop must fail its requests, not hang them
            log.exception("the slot engine's loop thread stopped")
            with self._cond:
                self._stopped = True
                error = f"the slot engine's loop thread stopped: {type(exc).__name__}: {exc}"
                self._stop_reason = self._stop_reason or error
                self._fail_running(error)  # the lock is reentrant; their tokens so far from the table
                self._done.extend(r.completion(error) for r in self._waiting)
                self._waiting.clear()
        finally:
            with self._cond:
                closed = self._closed  # set before close() joins: one of the two drops the state
            if closed:
                self._drop_state()

    def _serve_requests(self) -> None:
        with torch.inference_mode():
            while True:
                self._pace()
                with self._cond:
                    while not (
                        self._stopped or self._cancel or self._waiting or self._running or self._needs_build()
                    ):
                        self._cond.wait()
                    if self._stopped:
                        return
                    if self._cancel:
                        self._waiting.clear()
                        self._drop_running()
                        self._cancel = False
                        self._cond.notify_all()
                        continue
                    needs_build = self._needs_build()  # first the requests in flight finish
                    build = needs_build and not self._running
                    admitted = self._admit() if self._waiting and not needs_build else []
                try:
                    with self._device_lock:
                        if build:
                            self._build()
                        if admitted:
                            self._prefill(admitted)
                        if self._running:
                            self._step()
                except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the loop
                    log.exception("slot engine step failed")
                    self._fail_running(f"{type(exc).__name__}: {exc}")

    def _pace(self) -> None:
        """Wait until the next step is due (step_interval_seconds); requests that arrive meanwhile
        are admitted before it. Only a stop or a cancel ends the wait early."""
        wait = self._next_step_at - time.perf_counter()
        if self._running and wait > 0:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._cancel, wait)

    def _needs_build(self) -> bool:
        small = self.decoder is None or self.decoder.max_sequence_tokens < self._wanted_tokens
        return small and self._wanted_tokens > 0

    def _admit(self) -> list[Admission]:
        """Waiting requests for the free slots (slot_admission.py). Called under the lock."""
        free = [s for s in range(self.slots) if s not in self._running]
        return admit(self._waiting, free, self.prefixes, self._prefix_counts, self.max_prefill_tokens)

    def _build(self) -> None:
        with self._cond:
            wanted, model = self._wanted_tokens, self.model
            self.decoder = self.prefixes = None  # the old regions go before the new ones are allocated
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            stored = self.slots if self.prefix_sharing else 0
            options = self._decoder_options
            decoder = SlotDecoder(model, self.slots, wanted, self.device, stored=stored, **options)
            decoder.compile_prefills()
            if self.device.type == "cuda":
                decoder.capture()
        except Exception as exc:  # noqa: BLE001 - reported to reserve() and to the waiting requests
            with self._cond:
                self._build_error = exc
                self._wanted_tokens = 0  # those that asked for it failed: the next builds its own size
                for request in self._waiting:
                    self._done.append(request.completion(f"building the slot decoder failed: {exc}"))
                self._waiting.clear()
                self._cond.notify_all()
            return
        with self._cond:
            closed = self._stopped  # close() may have returned: nothing may hold the regions after it
            if not closed:
                self.decoder = decoder
                if self.prefix_sharing:  # the new regions hold nothing yet
                    self.prefixes = CachedPrefixes(self.slots, self.slots, decoder.max_len)
                self._cond.notify_all()
                log.info("slot decoder: %d slots of %d tokens", self.slots, wanted)
        del decoder  # closed: its only reference, so its regions (and graphs) go now
        if closed and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prefill(self, admitted: list[Admission]) -> None:
        decoder = self.decoder
        assert decoder is not None
        with self._cond:
            for a in admitted:
                self._running[a.slot] = a.request
                self._table.admit(a.slot, a.request)
        for a in admitted:  # every copy before the prefill writes any slot
            if a.cached:
                decoder.cache.copy_columns(a.source, a.slot, a.cached)
        prompts = [a.request.prompt_ids for a in admitted]
        first = decoder.prefill([a.slot for a in admitted], prompts, [a.cached for a in admitted]).tolist()
        if self.prefixes is not None:
            with self._cond:
                for a in admitted:
                    self.prefixes.hold(a.slot, a.request.prompt_ids)
        self._record(np.array([a.slot for a in admitted]), first)

    def _step(self) -> None:
        assert self.decoder is not None
        busy = len(self._running)  # slots 0..busy-1 (kept at the front)
        # the step writes each request's newest token at position len(prompt) + len(tokens) - 1
        columns = self._table.columns(busy)
        self._next_step_at = time.perf_counter() + self.step_interval_seconds
        self.decoder.run_step(busy, columns)
        tokens = self.decoder.tokens[:busy, 0].cpu().numpy()  # waits for the step
        self._record(self._table.front[:busy], tokens)

    def _record(self, slots: np.ndarray, tokens: Sequence[int] | np.ndarray) -> None:
        """Each slot's new token (stamped now); retire the requests that are complete."""
        now = time.perf_counter()
        with self._cond:
            finished = self._table.record(slots, tokens, now).tolist()
            for slot in finished:
                request = self._table.fill(slot, self._running.pop(slot))  # only this thread changes it
                self._done.append(request.completion())
                self._keep_prefix(slot, request)
            if finished:  # admissions take the lowest free slots: only a retirement leaves a hole
                self._compact()
            self._cond.notify_all()

    def _compact(self) -> None:
        """Keep the busy slots at the front, so that a step runs only as many rows as are busy: the
        highest busy slot moves into each free one below the count. Called under the lock."""
        assert self.decoder is not None
        count = len(self._running)
        for hole in [s for s in range(count) if s not in self._running]:
            top = max(self._running)
            self.decoder.move(top, hole)
            self._table.move(top, hole)
            if self.prefixes is not None:
                self.prefixes.move(top, hole)
            self._running[hole] = self._running.pop(top)

    def _drop_running(self) -> None:
        """Forget the requests in flight. Their slots are free, and a free slot's row matches
        nothing: it may be written (an admission's copy or prefill) before a copy out of it."""
        if self.prefixes is not None:
            for slot in self._running:
                self.prefixes.release(slot)
        self._running.clear()

    def _keep_prefix(self, slot: int, request: SlotRequest) -> None:
        """With prefix sharing, a finished request's K/V (its prompt and every output but the
        last, whose K/V no step wrote) into the store, before its slot is reused. Under the lock."""
        if self.prefixes is not None and self.decoder is not None:
            sequence = request.prompt_ids + tuple(request.tokens[:-1])
            self.prefixes.keep(slot, sequence, self.decoder.cache.copy_columns)

    def _fail_running(self, error: str) -> None:
        """Fail the requests in flight (admitted ones included: `_prefill` runs them first)."""
        with self._cond:
            self._done.extend(self._table.fill(s, r).completion(error) for s, r in self._running.items())
            self._drop_running()
            self._cond.notify_all()
