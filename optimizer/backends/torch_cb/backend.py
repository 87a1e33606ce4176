"""Build a continuous-batching candidate: the torch backend's model and weights, then the engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from optimizer.backends.parity import CHECKED_TOKENS, check_greedy_parity, random_prompts
from optimizer.backends.torch.backend import load_hf_model, quantize_weights
from optimizer.backends.torch.compiling import place_inductor_cache
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.model import ModelSpec
from optimizer.target import TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate


def build(
    model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
) -> ContinuousBatchingEngine:
    settings = candidate.settings
    assert isinstance(settings, ContinuousBatchingSettings)
    if not target.is_cuda and candidate.threads:
        torch.set_num_threads(candidate.threads)
    if settings.compile:
        place_inductor_cache(workdir / "inductor")
    hf_model = load_hf_model(model, settings.precision, settings.attention, target.device)
    numerics = TorchSettings(precision=settings.precision, quantization=settings.quantization)
    quantize_weights(hf_model, numerics, model)
    engine = ContinuousBatchingEngine(hf_model, settings, target.device, candidate.batch_size)
    try:
        # at build, on prompts of its own: the scheduler and paged cache are never probed otherwise
        prompts = random_prompts(int(hf_model.config.vocab_size))
        check_greedy_parity(engine, prompts, CHECKED_TOKENS, settings.precision)
    except BaseException:
        engine.close()
        raise
    return engine
