"""What measuring needs, prepared once per process: the resolved model, the detected target, an
energy meter, the workload's prompts and the quality text, as token ids.

`search.evaluate.Evaluator.for_setup` measures candidates with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.config import ModelConfig, QualityConfig, TargetConfig, WorkloadConfig
from optimizer.measure.energy import EnergyMeter, make_meter
from optimizer.measure.text import load_text, token_windows
from optimizer.measure.workload import Workload
from optimizer.model import ModelSpec, resolve_model
from optimizer.target import TargetSpec, detect_target

if TYPE_CHECKING:
    import torch


@dataclass
class MeasurementSetup:
    """What measuring needs, shared by `optimize`, the search workers, `verify` and the benchmarks."""

    model: ModelSpec
    target: TargetSpec
    meter: EnergyMeter
    workload: Workload
    quality_tokens: torch.Tensor  # [sequences, tokens]
    text_sha256: str
    workload_cfg: WorkloadConfig
    quality_cfg: QualityConfig
    cache_dir: Path


def prepare_measurement(
    model_cfg: ModelConfig,
    target_cfg: TargetConfig,
    workload_cfg: WorkloadConfig,
    quality_cfg: QualityConfig,
    cache_dir: Path,
    prompt_pool: int,
) -> MeasurementSetup:
    import torch
    from transformers import AutoTokenizer

    _quiet_libraries(cache_dir)
    model = resolve_model(model_cfg, cache_dir)
    target = detect_target(target_cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=model.trust_remote_code)
    text = load_text(quality_cfg.text)
    prompts = token_windows(
        tokenizer, text.workload, workload_cfg.prompt_tokens, prompt_pool, "workload.prompt_tokens"
    )
    quality = token_windows(
        tokenizer, text.quality, quality_cfg.seq_tokens, quality_cfg.num_sequences, "quality.num_sequences"
    )
    return MeasurementSetup(
        model=model,
        target=target,
        meter=make_meter(target),
        workload=Workload(torch.tensor(prompts), workload_cfg.max_new_tokens),
        quality_tokens=torch.tensor(quality),
        text_sha256=text.sha256,
        workload_cfg=workload_cfg,
        quality_cfg=quality_cfg,
        cache_dir=cache_dir,
    )


def _quiet_libraries(cache_dir: Path) -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("torchao").setLevel(logging.ERROR)  # warns about CUDA kernels on CPU machines
    hf_logging.disable_progress_bar()
