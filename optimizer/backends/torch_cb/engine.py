"""Continuous batching through transformers' own engine (`init_continuous_batching`).

Requests go to a `ContinuousBatchingManager`, whose background thread schedules, prefills and
decodes them on a paged KV cache. The manager is created, warmed up and started once and then
serves every `generate()` call (each row one request: an offline batch) and every `submit()` (a
request of a stream, at its arrival); we size its cache and read its per-token timestamps, the
scheduling is transformers'.

With sdpa, transformers packs the requests of a forward into one sequence under a block-diagonal
mask, and the attention kernel computes the whole masked product: every request attends over the
keys of all of them. On a CPU that is where it loses to a lockstep `generate` (SmolLM2-135M bf16,
2 threads, 16 requests, 32 new tokens): with 64-token prompts prefill takes 0.75 s against 0.4 s
and a decode step 40 ms, as lockstep (249 against 299 tok/s); with 256-token prompts a decode step
takes 185 ms against 76 ms (64 against 120 tok/s).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from optimizer.backends.base import Generation
from optimizer.backends.openmp import release_openmp_threads
from optimizer.backends.torch_cb.prefix import PrefixCounters
from optimizer.backends.torch_cb.progress import first_token_times
from optimizer.backends.torch_cb.requests import check_request, learned_position_limit
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.errors import UserError
from optimizer.measure.serving import Completion

log = logging.getLogger(__name__)

# Prompt + new tokens per request the paged cache is first sized for. A longer request re-creates
# the manager with room for it, so that the first, short load check does not fix the size.
DEFAULT_MAX_SEQUENCE_TOKENS = 256
# Measured on a CPU (SmolLM2-135M bf16, 2 threads, 16 requests, 32 new tokens): pages of 16, 64
# and 256 tokens ran the same; max_batch_tokens 256, 512 and 1024 ran the same (249-253 tok/s with
# 64-token prompts, 61-62 with 256-token ones) while 128 (50) and 4096 (46) lost with 256-token
# prompts (packed attention grows with its square, per-forward overheads with its inverse).
# A generate() call that gets no result for this long fails instead of waiting forever.
DEFAULT_RESULT_TIMEOUT_SECONDS = 600.0
_POLL_SECONDS = 0.5
_STOP_TIMEOUT_SECONDS = 60.0


class ContinuousBatchingEngine:
    """An `Engine` and a `ServingEngine` that drive transformers' continuous-batching manager.

    Args:
        hf_model: A loaded HF causal LM, already on `device` (attention "sdpa" or a flash kernel).
        settings: The candidate's settings (cache size, prefix sharing, page size, offload, ...).
        device: Where the model lives.
        max_requests: Most requests decoded together (the candidate's batch size); more wait.
        max_sequence_tokens: Prompt + new tokens per request the paged cache is first sized for;
            a longer request re-creates the manager with room for it (`reserve` sizes it ahead).
        result_timeout_seconds: How long `generate()` waits without any result before failing.
    """

    def __init__(
        self,
        hf_model: Any,
        settings: ContinuousBatchingSettings,
        device: torch.device | str,
        max_requests: int,
        *,
        max_sequence_tokens: int = DEFAULT_MAX_SEQUENCE_TOKENS,
        result_timeout_seconds: float = DEFAULT_RESULT_TIMEOUT_SECONDS,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self.model: Any = hf_model
        self.settings = settings
        self.device = torch.device(device)
        self.max_requests = max_requests
        # never below the batch: transformers would cut the batch to it
        self.max_batch_tokens = max(settings.max_batch_tokens, max_requests)
        self.page_size = settings.page_size
        self.result_timeout_seconds = result_timeout_seconds
        self.sequence_tokens = self._round_to_pages(max_sequence_tokens)  # what the cache holds now
        self._manager: Any = None  # created by the first generate(): scoring alone needs no cache
        self._pending: set[str] = set()  # submitted and not yet collected
        self._prefix = PrefixCounters()
        self._position_limit = learned_position_limit(hf_model)  # None: no learned positions

    def _round_to_pages(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.page_size)) * self.page_size

    def _num_blocks(self) -> int:
        if self.settings.kv_cache_tokens:
            # at least one request of the longest kind must fit, or nothing would ever run
            tokens = max(self.settings.kv_cache_tokens, self.sequence_tokens)
            return math.ceil(tokens / self.page_size)
        return self.max_requests * (self.sequence_tokens // self.page_size)

    def _continuous_batching_config(self) -> Any:
        from transformers import ContinuousBatchingConfig

        cuda = self.device.type == "cuda"
        return ContinuousBatchingConfig(
            page_size=self.page_size,
            # sized for the work (or the candidate's budget), not from free memory: transformers
            # would take 60% of host RAM on a CPU (90% of a GPU), leaving nothing for score()
            num_blocks=self._num_blocks(),
            max_batch_tokens=self.max_batch_tokens,
            max_requests_per_batch=self.max_requests,
            # a cache sized for max_requests whole requests needs no pages kept in reserve
            safety_margin=0.0,
            # offline workloads cycle through a pool of prompts and must not skip their prefill;
            # the rules allow prefix sharing for serving workloads only
            allow_block_sharing=self.settings.prefix_sharing,
            cpu_offload_space=float(self.settings.kv_offload_gib),
            # transformers' own heuristic leaves graphs off with an attention mask (sdpa), for the
            # padding they need; on a GPU we want the host out of the decode loop
            use_cuda_graph=cuda,
            # level 1: mode "default" with dynamic shapes, for the varlen path (sdpa) and, with a
            # flash kernel, the decode fast path. It pads every step's keys to 16384 tokens (or the
            # cache): on a CPU that made 16 tok/s against 186 eager, and still 167 with padding
            # of 16 query and 256 key tokens; dynamo hits its recompile limit on transformers'
            # deprecation wrappers either way.
            default_compile_level=1 if self.settings.compile else 0,
            # the candidate's attention is what we measure; flash is a candidate of its own
            auto_switch_to_flash=False,
        )

    def _start_manager(self) -> Any:
        from transformers import GenerationConfig

        generation_config = GenerationConfig(
            do_sample=False,
            eos_token_id=-1,  # no EOS: every request decodes exactly max_new_tokens
            pad_token_id=0,  # never used (a paged batch has no padding); avoids a warning
        )
        attention = self.model.config._attn_implementation
        manager = self.model.init_continuous_batching(
            generation_config=generation_config,
            continuous_batching_config=self._continuous_batching_config(),
        )
        try:
            if manager.logit_processor.do_processing:
                raise RuntimeError("continuous batching would process logits; greedy decoding must not")
            if self.model.config._attn_implementation != attention:
                raise RuntimeError(
                    f"continuous batching switched attention from {attention} "
                    f"to {self.model.config._attn_implementation}"
                )
            # the loop thread runs in the caller's inference mode, and so do its cache tensors
            with torch.inference_mode():
                manager.warmup()  # makes the cache; CUDA graphs and compiled kernels on a GPU
                _check_prefix_sharing(manager, self.settings.prefix_sharing)
                manager.start()
        except BaseException:
            _stop(manager)
            raise
        return manager

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        """Greedy-decode exactly `max_new_tokens` for each row of `prompt_ids` [batch, tokens].

        Each row is one request and all are submitted together; a request's TTFT runs from its
        submission to its first token (queueing included), its TPOT is the mean gap between its
        tokens.
        """
        if self.model is None:
            raise RuntimeError("the engine is closed")
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
            raise ValueError(f"prompt_ids must be [batch, tokens], got shape {tuple(prompt_ids.shape)}")
        rows = prompt_ids.tolist()
        for row in rows:
            check_request(self.model, row, max_new_tokens, self._position_limit)
        manager = self.reserve(prompt_ids.shape[1] + max_new_tokens)

        start = time.perf_counter()
        request_ids = manager.add_requests(rows, max_new_tokens=max_new_tokens, record_timestamps=True)
        outputs = self._wait_for(manager, request_ids)
        total = time.perf_counter() - start

        latencies = []
        for request_id in request_ids:
            out = outputs[request_id]
            stamps = out.timestamps
            if len(out.generated_tokens) != max_new_tokens or not stamps:
                raise RuntimeError(
                    f"request {request_id} returned {len(out.generated_tokens)} tokens, expected {max_new_tokens}"
                )
            ttft = stamps[0] - out.created_time  # created when add_requests submitted it
            tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.0
            latencies.append((ttft, tpot))
        token_ids = torch.tensor([outputs[r].generated_tokens for r in request_ids], dtype=torch.int64)
        return Generation(
            batch_size=len(rows),
            new_tokens=max_new_tokens,
            # the max: the time until every request has its first token, like a lockstep engine's
            # prefill, so that Generation.tpot_seconds stays the mean step after it
            ttft_seconds=max(ttft for ttft, _ in latencies),
            total_seconds=total,
            token_ids=token_ids,
            request_latencies=tuple(latencies),
        )

    def _wait_for(self, manager: Any, request_ids: list[str]) -> dict[str, Any]:
        """The finished output of every request; fails fast when the loop thread is gone."""
        pending = set(request_ids)
        outputs: dict[str, Any] = {}
        deadline = time.monotonic() + self.result_timeout_seconds
        while pending:
            result = manager.get_result(timeout=_POLL_SECONDS)
            if result is None:
                if not manager.is_running():
                    error = manager.background_thread_status.fatal_error
                    raise RuntimeError(
                        f"the continuous-batching thread stopped with {len(pending)} requests unfinished"
                        + (f": {error!r}" if error is not None else "")
                    ) from error
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no result from the continuous-batching thread for {self.result_timeout_seconds} s "
                        f"({len(pending)} of {len(request_ids)} requests unfinished)"
                    )
                continue
            if result.request_id not in pending or not result.is_finished():
                continue  # left over from an earlier call that failed
            if result.error is not None:
                raise RuntimeError(f"request {result.request_id} failed: {result.error}")
            pending.discard(result.request_id)
            outputs[result.request_id] = result
            deadline = time.monotonic() + self.result_timeout_seconds
        return outputs

    def reserve(self, sequence_tokens: int) -> Any:
        """The running manager, with room for requests of `sequence_tokens` (prompt + new) tokens."""
        if self.model is None:
            raise RuntimeError("the engine is closed")
        if self._manager is not None and sequence_tokens > self.sequence_tokens:
            if self._pending:  # a new manager would lose them, and count request ids from 0 again
                raise RuntimeError("cannot re-create the paged cache while requests run")
            log.info("re-creating the paged cache for %d tokens per request", sequence_tokens)
            self._manager, manager = None, self._manager
            _stop(manager)
        if self._manager is None:
            self.sequence_tokens = max(self.sequence_tokens, self._round_to_pages(sequence_tokens))
            self._manager = self._start_manager()
        if self.device.type == "cpu" and not self._pending:
            # only while the loop thread is idle: releasing OpenMP resources while it computes
            # made every one of its parallel ops rebuild its team (4 requests: 4.3 s against 0.6 s)
            release_openmp_threads()
        return self._manager

    def forget_cached_prefixes(self) -> None:
        """Start the next run of a stream with an empty prefix cache. transformers keeps the blocks
        of finished requests for later matches, so a repeated run would find its own prompts there
        from the run before and measure a reuse no fresh deployment sees. The counters go on."""
        if self._manager is None or not self.settings.prefix_sharing or self._pending:
            return
        self._manager, manager = None, self._manager
        _stop(manager)
        self.reserve(self.sequence_tokens)

    # -- ServingEngine: requests of a stream, submitted at their arrival times -----------------

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        check_request(self.model, prompt_ids, max_new_tokens, self._position_limit)
        manager = self.reserve(len(prompt_ids) + max_new_tokens)
        if self.settings.prefix_sharing:
            self._prefix.attach(manager)
        request_id = manager.add_request(
            list(prompt_ids), max_new_tokens=max_new_tokens, record_timestamps=True
        )
        if request_id is None or not manager.is_running():
            raise RuntimeError("the continuous-batching thread is not running" + _thread_error(manager))
        self._pending.add(request_id)
        self._prefix.prompt_tokens += len(prompt_ids)
        return str(request_id)

    def collect(self, timeout_seconds: float) -> list[Completion]:
        if self.model is None:  # closed: nothing will ever finish, so waiting would only stall
            raise RuntimeError("the engine is closed")
        manager = self._manager
        if manager is None:
            time.sleep(max(timeout_seconds, 0.0))
            return []
        done: list[Completion] = []
        timeout = max(timeout_seconds, 0.0)
        while self._pending:
            result = manager.get_result(timeout=timeout)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError(
                        "the continuous-batching thread stopped with requests unfinished"
                        + _thread_error(manager)
                    )
                break
            timeout = 0.0  # take what else is ready, without waiting
            if result.request_id not in self._pending or not result.is_finished():
                continue
            self._pending.discard(result.request_id)
            error = None if result.error is None else str(result.error)
            done.append(
                Completion(
                    result.request_id, tuple(result.generated_tokens), tuple(result.timestamps or ()), error
                )
            )
        if not self._pending and not done:
            time.sleep(timeout)
        return done

    def first_token_times(self) -> dict[str, float | None]:
        """Each unfinished stream request's first token time, None while it has none."""
        if self._manager is None:
            return {}
        return first_token_times(self._manager, self._pending)

    def cancel_all(self) -> None:
        manager = self._manager
        if manager is None:
            return
        for request_id in self._pending:
            manager.cancel_request(request_id)
        self._pending.clear()
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        while not _idle(manager) and time.monotonic() < deadline:
            time.sleep(0.05)
            while manager.get_result(timeout=0.0) is not None:  # results of cancelled requests
                pass

    def prefix_counters(self) -> dict[str, float]:
        """Prefix sharing so far (prefix_sharing): prompt tokens submitted, and those found in the
        cache. Empty without sharing, as the torch slot loop: no prefix cache was measured."""
        return self._prefix.as_dict() if self.settings.prefix_sharing else {}

    @torch.inference_mode()
    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, tokens, vocab] (float32, CPU): a plain forward, no paged cache."""
        if self.model is None:
            raise RuntimeError("the engine is closed")
        ids = token_ids.to(self.device)
        if self._manager is None or not self._manager.is_running():
            return self.model(input_ids=ids).logits.float().cpu()
        with self._manager.pause():  # the loop thread shares the model: hold it while we use it
            return self.model(input_ids=ids).logits.float().cpu()

    def close(self) -> None:
        """Stop the loop thread, free the paged cache and drop the model. Safe to call twice."""
        self._pending.clear()
        manager, self._manager = self._manager, None
        if manager is not None:
            _stop(manager)
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _stop(manager: Any) -> None:
    """Stop a manager's loop thread and free its cache (it restores the model's attention too)."""
    # a hard stop fails the requests still queued or running: the default stop decoded every one
    # of them to its last token before close() returned
    manager.stop(block=True, timeout=_STOP_TIMEOUT_SECONDS, hard_stop=True)
    if manager.is_running():
        # destroy() would wait for it without a timeout
        log.warning("the continuous-batching thread did not stop within %s s", _STOP_TIMEOUT_SECONDS)
        return
    manager.destroy()


def _thread_error(manager: Any) -> str:
    """Why the loop thread died, for the candidate's failure reason ('' when it just stopped)."""
    error = getattr(getattr(manager, "background_thread_status", None), "fatal_error", None)
    return "" if error is None else f": {error!r}"


def _check_prefix_sharing(manager: Any, wanted: bool) -> None:
    """transformers turns block sharing off, silently, for a model with sliding-window layers:
    a prefix-sharing candidate would be measured without it."""
    cache = manager.batch_processor.cache
    # (getattr: a transformers without the flag is not refused for its absence)
    if wanted and not getattr(cache, "use_prefix_sharing", True):
        layers = ", ".join(getattr(cache, "cache_allocators", None) or ["?"])
        raise UserError(
            "space.torch_cb.prefix_sharing",
            "is true, but transformers' paged cache shares no prefix blocks for this model "
            f"(attention layers: {layers}; sliding-window layers cannot share)",
            "use prefix_sharing: [false] for this model",
        )


def _idle(manager: Any) -> bool:
    """No request queued, waiting or running (internals of transformers' manager; if they are
    not where we look, the manager counts as idle after the caller's wait)."""
    processor = getattr(manager, "batch_processor", None)
    scheduler = getattr(processor, "scheduler", None)
    if scheduler is None:
        return True
    return manager.input_queue.empty() and not scheduler.active_requests and not scheduler.waiting_requests
