"""Build a llama.cpp candidate: its GGUF (as shipped, converted or requantized, cached), then the
engine, checked by generating two tokens and by greedy parity of its batched decoding (sequence
ids, KV cells written step by step) against the one-pass forward the quality probe scores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import load_check
from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.engine import LlamaCppEngine
from optimizer.backends.llamacpp.errors import LlamaCppBuildError, LlamaCppError
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.llamacpp.weights import prepared_gguf
from optimizer.backends.parity import CHECKED_TOKENS, check_greedy_parity, random_prompts

if TYPE_CHECKING:
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

# llama.cpp's quantized dot products round activations to 8 bits, and a batch of many sequences
# takes other kernels than one sequence's forward: logit gaps within bf16's tolerance are ties
# (measured on SmolLM2 Q4_K_M with a q4_0 KV cache: a 0.075 gap flipped one greedy token).
PARITY_PRECISION = "bf16"


def build(model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> LlamaCppEngine:
    settings = candidate.settings
    assert isinstance(settings, LlamaCppSettings)
    gpu = None
    if target.is_cuda:
        if not native.supports_gpu_offload():
            raise LlamaCppBuildError("this llama-cpp-python build cannot offload to a GPU (no CUDA build)")
        gpu = target.gpu.index if target.gpu is not None else 0  # the target's cuda:<index>
    threads = candidate.threads if not target.is_cuda else 0
    path = prepared_gguf(model, settings, workdir, threads or target.cores)
    engine = LlamaCppEngine(path, settings, threads, candidate.batch_size, gpu=gpu)
    load_check(engine, LlamaCppError)  # closes the engine when it fails
    try:
        prompts = random_prompts(engine.vocab, rows=max(2, min(candidate.batch_size, 4)))
        check_greedy_parity(engine, prompts, CHECKED_TOKENS, PARITY_PRECISION)
    except BaseException:
        engine.close()
        raise
    return engine
