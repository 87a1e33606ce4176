"""Continuous batching through transformers' own engine (`init_continuous_batching`).

Every row of a batch is one request to a `ContinuousBatchingManager`, whose background thread
schedules, prefills and decodes them on a paged KV cache. The manager is created, warmed up and
started once and then serves every `generate()` call; we size its cache and read its per-token
timestamps, the scheduling is transformers'.

With sdpa, transformers packs the requests of a forward into one sequence under a block-diagonal
mask, and the attention kernel computes the whole masked product: every request attends over the
keys of all of them. On a CPU that is where it loses to a lockstep `generate` (SmolLM2-135M bf16,
2 threads, 16 requests, 32 new tokens): with 64-token prompts prefill takes 0.75 s against 0.4 s
and a decode step 40 ms, as lockstep (249 against 299 tok/s); with 256-token prompts a decode step
takes 185 ms against 76 ms (64 against 120 tok/s).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

from optimizer.backends.base import Generation
from optimizer.backends.torch.settings import TorchSettings

log = logging.getLogger(__name__)

# Prompt + new tokens per request the paged cache is first sized for. A longer request re-creates
# the manager with room for it, so that the first, short load check does not fix the size.
DEFAULT_MAX_SEQUENCE_TOKENS = 256
# Tokens per cache page: transformers' default; pages of 16, 64 and 256 tokens measured the same
# on a CPU (SmolLM2-135M bf16, 16 x (64 + 32) tokens, within noise).
DEFAULT_PAGE_SIZE = 256
# Most tokens in one forward; longer prefills are chunked. Packed attention grows with the square
# of it, per-forward overheads with its inverse: on a CPU (SmolLM2-135M bf16, 2 threads, 16
# requests, 32 new tokens) 256, 512 and 1024 measured the same (249-253 tok/s with 64-token
# prompts, 61-62 with 256-token ones) while 128 (50) and 4096 (46) lost with 256-token prompts.
# Never below the number of requests, which transformers would otherwise cut to it.
DEFAULT_MAX_BATCH_TOKENS = 256
# A generate() call that gets no result for this long fails instead of waiting forever.
DEFAULT_RESULT_TIMEOUT_SECONDS = 600.0
_POLL_SECONDS = 0.5
_STOP_TIMEOUT_SECONDS = 60.0


class ContinuousBatchingEngine:
    """An `Engine` that drives transformers' continuous-batching manager.

    Args:
        hf_model: A loaded HF causal LM, already on `device` (attention "sdpa" or a flash kernel).
        settings: The candidate's torch settings (`loop="continuous"`, `kv_cache="paged"`).
        device: Where the model lives.
        max_requests: Most requests decoded together (the candidate's batch size); more wait.
        max_sequence_tokens: Prompt + new tokens per request the paged cache is first sized for
            (`max_requests` of them); a longer request re-creates the manager with room for it.
        max_batch_tokens: Most tokens in one forward; None: `max(max_requests, 256)`.
        page_size: Tokens per cache page.
        result_timeout_seconds: How long `generate()` waits without any result before failing.
    """

    def __init__(
        self,
        hf_model: Any,
        settings: TorchSettings,
        device: torch.device | str,
        max_requests: int,
        *,
        max_sequence_tokens: int = DEFAULT_MAX_SEQUENCE_TOKENS,
        max_batch_tokens: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        result_timeout_seconds: float = DEFAULT_RESULT_TIMEOUT_SECONDS,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        if max_batch_tokens is None:
            max_batch_tokens = max(max_requests, DEFAULT_MAX_BATCH_TOKENS)
        if max_batch_tokens < max_requests:
            # transformers would silently lower max_requests_per_batch to max_batch_tokens
            raise ValueError(
                f"max_batch_tokens ({max_batch_tokens}) must be >= max_requests ({max_requests})"
            )
        self.model: Any = hf_model
        self.settings = settings
        self.device = torch.device(device)
        self.max_requests = max_requests
        self.max_batch_tokens = max_batch_tokens
        self.page_size = page_size
        self.result_timeout_seconds = result_timeout_seconds
        self.sequence_tokens = self._round_to_pages(max_sequence_tokens)  # what the cache holds now
        self._manager: Any = None  # created by the first generate(): scoring alone needs no cache

    def _round_to_pages(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.page_size)) * self.page_size

    def _continuous_batching_config(self) -> Any:
        from transformers import ContinuousBatchingConfig

        cuda = self.device.type == "cuda"
        return ContinuousBatchingConfig(
            page_size=self.page_size,
            # sized for the work, not from free memory: transformers would take 60% of host RAM on a
            # CPU (90% of a GPU), leaving nothing for score() and the next candidate
            num_blocks=self.max_requests * (self.sequence_tokens // self.page_size),
            max_batch_tokens=self.max_batch_tokens,
            max_requests_per_batch=self.max_requests,
            # the cache holds max_requests whole requests by construction: no prefill held back
            # to keep free pages in reserve
            safety_margin=0.0,
            # workloads cycle through a pool of prompts: a prefix cache would skip their prefill on
            # the second pass, and every candidate must do the same work
            allow_block_sharing=False,
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
                manager.warmup()  # CUDA graphs and compiled kernels; nothing on an eager CPU
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
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        needed = prompt_ids.shape[1] + max_new_tokens
        if self._manager is not None and needed > self.sequence_tokens:
            log.info("re-creating the paged cache for %d tokens per request", needed)
            self._manager, manager = None, self._manager
            _stop(manager)
        if self._manager is None:
            self.sequence_tokens = max(self.sequence_tokens, self._round_to_pages(needed))
            self._manager = self._start_manager()
        manager = self._manager
        rows = prompt_ids.tolist()
        if self.device.type == "cpu":
            release_openmp_threads()

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
        manager, self._manager = self._manager, None
        if manager is not None:
            _stop(manager)
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _stop(manager: Any) -> None:
    """Stop a manager's loop thread and free its cache (it restores the model's attention too)."""
    manager.stop(block=True, timeout=_STOP_TIMEOUT_SECONDS)
    manager.destroy()
    if manager.is_running():
        log.warning("the continuous-batching thread did not stop within %s s", _STOP_TIMEOUT_SECONDS)


@cache
def _openmp_pause() -> Any:
    """`omp_pause_resource_all` of the OpenMP runtime torch has loaded, or None (not Linux, none)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    for line in maps.read_text().splitlines():
        path = line.rsplit(maxsplit=1)[-1]
        if Path(path).name.startswith(("libgomp", "libiomp", "libomp")):
            function = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
            if function is not None:
                function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
            return function
    return None


def release_openmp_threads() -> None:
    """Release the calling thread's idle OpenMP workers, so that the loop thread's team has the cores.

    torch runs an op on the OpenMP team of the thread that calls it, so the generation loop thread
    has a team of its own next to the caller's. When the two together have more threads than there
    are cores, libgomp stops letting idle workers spin and every parallel op pays a futex wake-up:
    on 2 cores a decode step of SmolLM2-135M (bf16, 16 requests) took 56 ms on the loop thread and
    40 ms with the caller's team released, as on the caller's own thread (188 -> 249 tok/s for 16 x
    (64 + 32) tokens). The team comes back at the caller's next parallel op, hence a release before
    every batch.
    """
    pause = _openmp_pause()
    if pause is not None:
        pause(1)  # omp_pause_soft: the idle threads end; nothing else is torn down
