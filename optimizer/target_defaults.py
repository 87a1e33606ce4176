"""The space and workload a run takes when the user names neither: they depend on the target,
and the space on the workload.

conf/config.yaml names the CPU presets (space=cpu-default, workload=chat), because Hydra composes
before anything is detected. A CPU search does not fit a GPU (llama.cpp's CPU build, a chat
stream of 2 requests/s, batches of 8), so on a GPU target each group the user left to its
default is composed again from its GPU preset. On a CPU, a stream whose prompts share prefixes
(conversations resending their history, a system prompt) takes cpu-agent: cpu-default with prefix
reuse on in every engine that has it. Overrides of single fields (`space.batch_sizes=`) still
apply, on top of whichever preset was taken.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from optimizer.config import RunConfig, TargetConfig, WorkloadConfig, compose_run_config

log = logging.getLogger(__name__)

GPU_PRESETS = {"space": "gpu-default", "workload": "gpu-chat"}
SHARED_PREFIX_SPACE = "cpu-agent"


def chosen_groups(overrides: Sequence[str]) -> set[str]:
    """The keys `overrides` set: a group given a preset (`space=...`, `+workload=...`) appears
    by its name, a field (`space.batch_sizes=...`) by its dotted key."""
    return {item.partition("=")[0].lstrip("+~") for item in overrides if "=" in item}


def targets_a_gpu(target: TargetConfig) -> bool:
    """Whether the run will measure on a GPU: a GPU preset says so, target=auto is detected."""
    if target.kind != "auto":
        return target.kind == "cuda"
    from optimizer.target import detect_target  # NVML, and torch only where NVML sees a GPU

    return detect_target(target).is_cuda


def compose_for_target(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> RunConfig:
    """compose_run_config, with the GPU presets for the groups the user left to their default
    when the target is a GPU."""
    cfg = compose_run_config(overrides, config_dir)
    chosen = chosen_groups(overrides)
    defaults = {g: p for g, p in GPU_PRESETS.items() if g not in chosen}
    if defaults and targets_a_gpu(cfg.target):
        log.info(
            "GPU target: %s (the GPU defaults; name a preset to choose another)",
            " ".join(f"{g}={p}" for g, p in defaults.items()),
        )
        return compose_run_config([*(f"{g}={p}" for g, p in defaults.items()), *overrides], config_dir)
    if "space" not in chosen and shares_prefixes(cfg.workload):
        log.info(
            "the stream's prompts share prefixes: space=%s (prefix reuse on; name a space to choose another)",
            SHARED_PREFIX_SPACE,
        )
        return compose_run_config([f"space={SHARED_PREFIX_SPACE}", *overrides], config_dir)
    return cfg


def shares_prefixes(workload: WorkloadConfig) -> bool:
    """A generated stream of conversations or behind a system prompt (a trace is not read here)."""
    return workload.serving and (workload.turns > 1 or workload.shared_prefix_tokens > 0)
