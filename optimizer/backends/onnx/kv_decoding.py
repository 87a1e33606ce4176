"""Greedy decoding over an exported decoder step, shared by the ONNX Runtime and TensorRT engines.

A runtime implements `DecoderSteps` (one forward with its own KV cache); `StepEngine` turns it
into an Engine: exactly `max_new_tokens` per row (EOS is not special here), host-clock timings.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch

from optimizer.backends.base import Generation


class DecoderSteps(Protocol):
    """One runtime session of a decoder exported by `onnx.export` (flat KV cache)."""

    max_batch: int | None  # rows per forward the runtime accepts (TensorRT profiles), None: any

    def start(self, batch_size: int) -> None:
        """Begin a new batch: an empty KV cache."""
        ...

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed `input_ids` [batch, tokens] (int64) after the cache; returns the greedy next token
        ids [batch] (int64, host) and keeps the grown cache for the next step."""
        ...

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits [batch, tokens, vocab] (float32, host) of a fresh sequence; the cache is untouched."""
        ...

    def close(self) -> None: ...


class StepEngine:
    """An Engine over DecoderSteps."""

    def __init__(self, steps: DecoderSteps) -> None:
        self.steps: DecoderSteps | None = steps

    def _live(self) -> DecoderSteps:
        if self.steps is None:
            raise RuntimeError("the engine is closed")
        return self.steps

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        # the prefill step yields the first token: 0 would still return one (as the llama.cpp and
        # torch-cb engines do, refuse it)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        steps = self._live()
        batch = prompt_ids.shape[0]
        ids = prompt_ids.numpy().astype(np.int64)
        start = time.perf_counter()
        steps.start(batch)
        token = steps.step(ids)
        first = time.perf_counter()
        tokens = [token]
        for _ in range(max_new_tokens - 1):
            token = steps.step(token[:, None])
            tokens.append(token)
        end = time.perf_counter()
        token_ids = torch.from_numpy(np.stack(tokens, axis=1))
        return Generation(batch, max_new_tokens, first - start, end - start, token_ids=token_ids)

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        steps = self._live()
        ids = token_ids.numpy().astype(np.int64)
        rows = steps.max_batch or ids.shape[0]
        chunks = [steps.logits(ids[i : i + rows]) for i in range(0, ids.shape[0], rows)]
        return torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))

    def close(self) -> None:
        if self.steps is not None:
            self.steps.close()
        self.steps = None
