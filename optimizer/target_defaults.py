"""The space and workload a run takes when the user names neither: they depend on the target,
and the space on the workload.

conf/config.yaml names the CPU presets (space=cpu-default, workload=chat), because Hydra composes
before anything is detected. A CPU search does not fit a GPU (llama.cpp's CPU build, a chat
stream of 2 requests/s, batches of 8), so on a GPU target each group the user left to its
default is composed again from its GPU preset. On a CPU, a stream whose prompts share prefixes
(conversations resending their history, a system prompt) takes cpu-agent: cpu-default with prefix
reuse on in every engine that has it; so does a trace whose requests do (several turns of one
conversation, or prompts that begin alike). Overrides of single fields (`space.batch_sizes=`) still
apply, on top of whichever preset was taken.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.config import RunConfig, TargetConfig, WorkloadConfig
from optimizer.config.compose import compose_settings, run_config_from, validated
from optimizer.config.space import BACKENDS
from optimizer.config.target import keep_packaged_identity
from optimizer.errors import UserError
from optimizer.measure.text import json_lines

if TYPE_CHECKING:
    from omegaconf import DictConfig

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
    when the target is a GPU. The presets are chosen from the settings as composed, before
    validation, and only the last composition is validated: each config warning is said once."""
    settings = compose_settings(overrides, config_dir)
    keep_packaged_identity(settings.target, overrides)  # a user's h100.yaml is still the H100 preset
    presets = _target_presets(settings, overrides)
    if presets:
        settings = compose_settings([*presets, *overrides], config_dir)
    cfg = run_config_from(settings, overrides, config_dir)
    _check_axes_searched(cfg, overrides)
    return _user_gpu_figures(cfg)


def _target_of(settings: DictConfig) -> TargetConfig | None:
    """The composed target, validated alone; None when it is invalid: validating the whole
    config then says so, in the order it checks its fields."""
    try:
        target = validated(settings.target)
    except UserError:
        return None
    assert isinstance(target, TargetConfig)
    return target


def _user_gpu_figures(cfg: RunConfig) -> RunConfig:
    """target=auto on a known GPU: the capabilities of the user's preset of its name (or of its
    family: h100.yaml for an H100 PCIe; optimizer/target_presets.py), which detection reads from
    `target.config_dir`, set in the config the coordinator and every worker detect from (a worker
    on another node may not see that directory) and --show-config prints; values given as
    overrides stay. What the preset leaves out, detection fills from the device, then the
    packaged preset."""
    target = cfg.target
    if target.config_dir is None or target.name != "auto" or target.kind == "cpu":
        return cfg
    if not (Path(target.config_dir) / "target").is_dir():
        return cfg
    from optimizer.target import detect_target
    from optimizer.target_presets import user_preset, with_user_preset

    detected = detect_target(replace(target, config_dir=None))  # its name: the preset is read below
    preset = user_preset(target.config_dir, detected.name) if detected.is_cuda else None
    if preset is None:
        return cfg
    return replace(cfg, target=with_user_preset(target, preset))


def _target_presets(settings: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The presets composed before `overrides` for the groups the user left to their default:
    the GPU ones on a GPU target, cpu-agent for a stream sharing prefixes; none otherwise."""
    chosen = chosen_groups(overrides)
    defaults = {g: p for g, p in GPU_PRESETS.items() if g not in chosen}
    target = _target_of(settings) if defaults else None
    if target is not None and targets_a_gpu(target):
        log.info(
            "GPU target: %s (the GPU defaults; name a preset to choose another)",
            " ".join(f"{g}={p}" for g, p in defaults.items()),
        )
        return [f"{g}={p}" for g, p in defaults.items()]
    if "space" not in chosen and shares_prefixes(settings.workload):
        log.info(
            "the stream's prompts share prefixes: space=%s (prefix reuse on; name a space to choose another)",
            SHARED_PREFIX_SPACE,
        )
        return [f"space={SHARED_PREFIX_SPACE}"]
    return []


def _check_axes_searched(cfg: RunConfig, overrides: Sequence[str]) -> None:
    """An axis set for a backend the space does not search (`space.llamacpp.prefix_sharing=...`
    where llama.cpp comes only from `space.extra`, whose entries carry their own settings) changes
    nothing: said, naming the key and the fix. A warning, not an error: an argument list reused
    with fewer backends (a rerun restricted to one, on the same store) is not a mistake."""
    for key in sorted(chosen_groups(overrides)):
        group, _, axis = key.removeprefix("space.").partition(".")
        backend = group.replace("_", "-")
        if key.startswith("space.") and axis and backend in BACKENDS and backend not in cfg.space.backends:
            log.warning(
                f"{key} changes nothing: {backend} is not searched (space.backends={cfg.space.backends}; "
                f"an entry of space.extra carries its own settings); to search it too: "
                f"space.backends=[{','.join([*cfg.space.backends, backend])}]"
            )


def shares_prefixes(workload: WorkloadConfig | DictConfig) -> bool:
    """A generated stream of conversations or behind a system prompt, or a trace whose requests
    share prefixes (`trace_shares_prefixes`). `workload` validated, or as composed."""
    if workload.kind != "serving":
        return False
    if workload.trace:
        return trace_shares_prefixes(Path(workload.trace).expanduser())
    return workload.turns > 1 or workload.shared_prefix_tokens > 0


# A trace shares prefixes where a conversation has several requests, or where this share of its
# prompts begins with the same TRACE_PREFIX_CHARACTERS (about 64 tokens of English) as another
# prompt: a system prompt, or a history resent without conversation ids.
TRACE_PREFIX_CHARACTERS = 256
TRACE_SHARING_FRACTION = 0.25


def trace_shares_prefixes(path: Path) -> bool:
    """Whether a JSONL trace's requests share prefixes, from its text (no tokenizer: this runs
    while the config is composed). A file or line that cannot be read counts as sharing nothing:
    reading the trace for the run reports it, naming the line."""
    try:
        # as the run reads it: a BOM dropped, lines split at line ends only (U+2028 may be in a prompt)
        lines = json_lines(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError):
        return False
    prompts: list[str] = []
    turns: dict[str, int] = {}
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:  # JSONDecodeError, or an integer of too many digits
            continue
        if not isinstance(item, dict):
            continue
        if item.get("conversation") is not None:
            key = str(item["conversation"])
            turns[key] = turns.get(key, 0) + 1
            if turns[key] > 1:
                return True
        if isinstance(item.get("prompt"), str):
            prompts.append(item["prompt"])
    # each prompt's longest prefix shared with any other is the longer of those it shares with
    # its neighbours in sorted order
    ordered = sorted(prompts)
    shared = [0] * len(ordered)
    for index in range(len(ordered) - 1):
        length = len(os.path.commonprefix(ordered[index : index + 2]))
        shared[index] = max(shared[index], length)
        shared[index + 1] = length
    sharing = sum(length >= TRACE_PREFIX_CHARACTERS for length in shared)
    return bool(ordered) and sharing >= TRACE_SHARING_FRACTION * len(ordered)
