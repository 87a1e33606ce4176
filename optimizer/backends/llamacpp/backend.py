"""Build a llama.cpp candidate: its GGUF (as shipped, converted or requantized, cached), then the
engine, checked by generating two tokens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import load_check
from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.engine import LlamaCppEngine
from optimizer.backends.llamacpp.errors import LlamaCppBuildError, LlamaCppError
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.llamacpp.weights import prepared_gguf

if TYPE_CHECKING:
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

ALL_LAYERS = 999  # n_gpu_layers: every layer on the GPU


def build(model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> LlamaCppEngine:
    settings = candidate.settings
    assert isinstance(settings, LlamaCppSettings)
    gpu_layers = 0
    if target.is_cuda:
        if not native.supports_gpu_offload():
            raise LlamaCppBuildError("this llama-cpp-python build cannot offload to a GPU (no CUDA build)")
        gpu_layers = ALL_LAYERS
    threads = candidate.threads if not target.is_cuda else 0
    path = prepared_gguf(model, settings, workdir, threads or target.cores)
    engine = LlamaCppEngine(path, settings, threads, candidate.batch_size, gpu_layers=gpu_layers)
    load_check(engine, LlamaCppError)  # closes the engine when it fails
    return engine
