"""Greedy decoding whose decode step is one captured CUDA graph.

HF generate spends most of a small model's decode step on the host: per-step Python, logits
processors, full-vocabulary float32 logits and a host sync for the stopping check. Here the step
is `forward(last token) -> argmax -> write token -> advance position`, all on the device with a
static KV cache, captured once per shape and replayed `new_tokens - 1` times with no host
synchronization in between. With `compiled`, the decode forward is first compiled by inductor
(fused kernels, no cudagraph trees of its own) and then captured the same way, and the prefill
runs compiled too (one static shape per decoder): on the H200 at batch 1024 the eager prefill took
as long as the 63 decode steps after it, 55% of its kernel time unfused norm/RoPE/SiLU work and
copies (evals/results/2026-12-04-h200-gpu-check/profile.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from optimizer.backends.torch.compiling import (
    LayerwiseForward,
    additive_mask,
    cache_argument,
    compiled_with_room,
)

WARMUP_STEPS = 3  # steps on a side stream before capture (allocator, cuBLAS handles, compile)


def capture_step(step: Callable[[], None], pool: Any = None) -> torch.cuda.CUDAGraph:
    """`step` captured as a CUDA graph, after WARMUP_STEPS runs of it on a side stream (allocator,
    cuBLAS handles, compile); `pool`: a memory pool shared with other graphs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    return graph


class StaticLayerView:
    """One layer of a transformers StaticCache, whose `update` ignores the layer index the
    attention passes: a compiled layer then holds no guard on it (compiling.py)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.update(key_states, value_states)


class GraphDecoder:
    """One batch shape: `batch_size` prompts of `prompt_tokens`, `new_tokens` generated."""

    def __init__(
        self,
        model: Any,
        batch_size: int,
        prompt_tokens: int,
        new_tokens: int,
        device: torch.device,
        compiled: bool = False,
        compile_layers: bool = False,
    ) -> None:
        """`compile_layers`: run the layers one by one, compiled as one graph that serves them
        all (compiling.py), not the whole model as one graph."""
        from transformers import StaticCache

        self.model = model
        self.prompt_tokens = prompt_tokens
        self.new_tokens = new_tokens
        # capture runs WARMUP_STEPS steps and the captured one after a prefill: a short answer's
        # output and cache still need their columns (on CUDA an index past them is a sticky
        # device-side assert that fails every later candidate of the process)
        room = max(new_tokens, WARMUP_STEPS + 2)
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_tokens + room)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.output = torch.zeros(batch_size, room, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._cache_argument = cache_argument(model)
        self._layerwise = LayerwiseForward(model, compiled) if compile_layers else None
        self._layer_views = [StaticLayerView(layer) for layer in self.cache.layers]
        self.key_range = torch.arange(prompt_tokens + room, device=device)
        # compiled: one function whose prefill shape is a second static entry beside the step
        whole = compiled and not compile_layers
        # called with the decoder, not bound to it: a decoder holding its own bound method is a
        # reference cycle, its static cache freed only by the cyclic GC, not when it is dropped
        forward = GraphDecoder._forward
        self._run_forward = compiled_with_room(forward) if whole else forward

    def _forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        if self._layerwise is not None:  # every row at the same positions: one mask row each
            dtype = self._layerwise.base.embed_tokens.weight.dtype
            mask = additive_mask((self.key_range[None, :] <= cache_position[:, None])[None, None], dtype)
            hidden = self._layerwise(input_ids, cache_position[None], mask, self._layer_views)
            return self._layerwise.head(hidden[:, -1]).argmax(-1, keepdim=True)
        out = self.model(
            input_ids=input_ids,
            cache_position=cache_position,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: self.cache},
        )
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def prefill(self, prompt_ids: torch.Tensor, eager: bool = False) -> None:
        """Fill the cache with the prompts and write the first token. `eager`: skip the compiled
        forward (a profile's side-by-side)."""
        self.cache.reset()
        positions = torch.arange(self.prompt_tokens, device=prompt_ids.device)
        first = (GraphDecoder._forward if eager else self._run_forward)(self, prompt_ids, positions)
        self.tokens.copy_(first)
        self.output[:, :1].copy_(first)
        self.position.fill_(self.prompt_tokens)
        self.step_index.fill_(1)

    def step(self) -> None:
        """One decode step, launched eagerly (the captured graph replays exactly this)."""
        token = self._run_forward(self, self.tokens, self.position)
        self.output.index_copy_(1, self.step_index, token)
        self.tokens.copy_(token)
        self.position.add_(1)
        self.step_index.add_(1)

    def _capture(self, prompt_ids: torch.Tensor) -> torch.cuda.CUDAGraph:
        self.prefill(prompt_ids)  # allocates the static cache before capture
        return capture_step(self.step)

    def generate(self, prompt_ids: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Returns (new token ids [batch, new_tokens], seconds to first token, total seconds)."""
        if self.graph is None:
            self.graph = self._capture(prompt_ids)
        torch.cuda.synchronize()
        start = time.perf_counter()
        self.prefill(prompt_ids)
        torch.cuda.synchronize()
        first = time.perf_counter()
        for _ in range(self.new_tokens - 1):
            self.graph.replay()
        torch.cuda.synchronize()
        return self.output[:, : self.new_tokens].clone(), first - start, time.perf_counter() - start
