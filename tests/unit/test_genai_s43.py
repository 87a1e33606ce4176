"""onnxruntime-genai offline generation: what its timings cover, on a stand-in for the library
(the per-batch work each genai call does is timed as the real one would be)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.settings import OrtGenaiSettings

# og.Generator(...) took 12-15 ms per batch on the tiny test Llama (CPU, genai 0.18), against a
# 2.7 ms prefill: the KV buffers and search state of the batch are set up there
GENERATOR_SETUP_SECONDS = 0.05


class _Params:
    def __init__(self, model: Any) -> None:
        self.options: dict[str, Any] = {}

    def set_search_options(self, **options: Any) -> None:
        self.options = options


class _Generator:
    def __init__(self, model: Any, params: _Params) -> None:
        time.sleep(GENERATOR_SETUP_SECONDS)
        self.batch = int(params.options["batch_size"])

    def append_tokens(self, ids: np.ndarray) -> None:
        assert ids.shape[0] == self.batch

    def generate_next_token(self) -> None:
        pass

    def get_next_tokens(self) -> np.ndarray:
        return np.zeros(self.batch, dtype=np.int32)


def _engine() -> OrtGenaiEngine:
    og = SimpleNamespace(GeneratorParams=_Params, Generator=_Generator)
    return OrtGenaiEngine(og, object(), OrtGenaiSettings(), Path("unused"))


def test_time_to_first_token_counts_the_generators_setup() -> None:
    """A batch waits for its Generator before its prefill: its TTFT and total time include it, as
    the ORT backend's include its decoder state's setup and llama.cpp's run from submission."""
    generation = _engine().generate(torch.zeros((2, 4), dtype=torch.int64), 3)
    assert generation.token_ids is not None and tuple(generation.token_ids.shape) == (2, 3)
    assert generation.ttft_seconds >= GENERATOR_SETUP_SECONDS
    assert generation.total_seconds >= generation.ttft_seconds
