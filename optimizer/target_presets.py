"""The presets target=auto takes for the GPU it detects (and target=<name>, the packaged figures).

A board is named by its most specific packaged preset (BOARD_PRESETS). What the detected target
does not get from the config, in this order:
1. the user's preset of that name in --config-dir, else of the board's family (h100.yaml for an
   H100 PCIe or NVL: the name every H100 took before the variants had presets of their own): every
   capability it sets (USER_PRESET_FIELDS), as target=<name> would take them;
2. the device: its memory, power limit and compute capability (bf16, fp16, fp8);
3. the packaged preset of the exact variant: what the device does not report (bandwidth, FLOP/s,
   and the TDP where NVML cannot read the power limit).
target=<name> on a GPU takes step 3 too, from the packaged preset of that name: a user's preset
of a packaged name replaces the packaged file whole, and what it leaves out would be lost.
The packaged presets' precision flags are the capability's (tests/unit/test_target_resolution_s45b.py),
and their memory_gib is the board's nominal size, which the device reports exactly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.config import CONF_DIR, TargetConfig

if TYPE_CHECKING:
    from optimizer.target import TargetSpec

log = logging.getLogger("optimizer.target")  # said where the rest of detection is

# The packaged GPU presets by the tokens of NVML's board name they need and those they exclude:
# the family's own preset is one variant (h100: SXM; a100: SXM 80GB), so a board naming another
# variant takes that variant's preset, or none rather than the wrong board's bandwidth and power.
BOARD_PRESETS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("h200", frozenset({"h200"}), frozenset({"nvl"})),
    ("h100-pcie", frozenset({"h100", "pcie"}), frozenset()),
    ("h100", frozenset({"h100"}), frozenset({"pcie", "nvl"})),
    ("a100-pcie-40gb", frozenset({"a100", "pcie", "40gb"}), frozenset()),
    ("a100-pcie", frozenset({"a100", "pcie"}), frozenset({"40gb"})),
    ("a100-40gb", frozenset({"a100", "40gb"}), frozenset({"pcie"})),
    ("a100", frozenset({"a100"}), frozenset({"pcie", "40gb"})),
    ("l40s", frozenset({"l40s"}), frozenset()),
    ("l4", frozenset({"l4"}), frozenset()),
)
PACKAGED_BOARDS = frozenset(name for name, _need, _skip in BOARD_PRESETS)

# The fields a user's preset gives target=auto: the board's capabilities. Not memory_gib (a
# budget, and the device reports its memory) nor the energy settings, which are not the board's.
USER_PRESET_FIELDS = ("bf16", "fp16", "fp8", "tdp_watts", "memory_bandwidth_gb_per_s", "peak_bf16_tflops")
PACKAGED_FIELDS = ("tdp_watts", "memory_bandwidth_gb_per_s", "peak_bf16_tflops")


def preset_name(gpu_name: str) -> str:
    """The most specific packaged preset for the board (most tokens matched); else its name."""
    tokens = re.split(r"[\s_-]+", gpu_name.lower())
    matches = [
        (len(need), name)
        for name, need, skip in BOARD_PRESETS
        if need <= set(tokens) and not skip & set(tokens)
    ]
    if matches:
        return max(matches)[1]
    return "-".join(t for t in tokens if t != "nvidia")


def preset_family(name: str) -> list[str]:
    """`name`, then the packaged presets its name extends, most specific first: a100-pcie-40gb,
    a100-pcie, a100. Only packaged names: geforce.yaml is no family of a GeForce RTX 4090."""
    parts = name.split("-")
    shorter = ["-".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
    return [name, *(p for p in shorter if p in PACKAGED_BOARDS)]


def user_preset(config_dir: str | None, name: str) -> TargetConfig | None:
    """The user's target preset for the board `name` in their config directory: of that name,
    else of its family (`preset_family`), validated as target=<name> reads it; None where there
    is none (nor a directory: a worker on a node without it keeps the figures the config
    carries, then the packaged preset's)."""
    if not config_dir:
        return None
    for candidate in preset_family(name):
        path = Path(config_dir) / "target" / f"{candidate}.yaml"
        if path.is_file():
            return _read_user_preset(config_dir, candidate, path, name)
    return None


def _read_user_preset(config_dir: str, preset: str, path: Path, board: str) -> TargetConfig:
    from optimizer.config.compose import compose_preset, validated

    # the preset alone: the run's other groups and overrides are not known where a worker detects
    target = validated(compose_preset("target", preset, config_dir).target)
    assert isinstance(target, TargetConfig)
    if path not in _READ:
        _READ.add(path)
        # a family's preset (the name every H100 took before its variants had their own) is
        # said with the name that would keep it to this variant
        variant = (
            ""
            if preset == board
            else f" (no {board}.yaml there: a preset of that name would be this variant's alone)"
        )
        log.info("target=auto on a %s: the capabilities %s sets%s", board, path, variant)
    return target


_READ: set[Path] = set()  # the user presets said: a run detects its target more than once


def with_user_preset(target: TargetConfig, preset: TargetConfig | None) -> TargetConfig:
    """`target` with the capabilities it leaves unset (None) taken from the user's preset."""
    if preset is None:
        return target
    unset = {f: getattr(preset, f) for f in USER_PRESET_FIELDS if getattr(target, f) is None}
    return replace(target, **unset)


def fill_from_packaged(spec: TargetSpec) -> TargetSpec:
    """The GPU target's figures that neither the config nor the device gave, from the packaged
    conf/target/<spec.name>.yaml: the detected board's exact variant (target=auto) or the named
    preset's namesake (target=<name>); none where no such file is packaged."""
    path = CONF_DIR / "target" / f"{spec.name}.yaml"
    if all(getattr(spec, f) is not None for f in PACKAGED_FIELDS) or not path.is_file():
        return spec
    import yaml

    values = yaml.safe_load(path.read_text()) or {}
    unset: dict[str, Any] = {f: values.get(f) for f in PACKAGED_FIELDS if getattr(spec, f) is None}
    return replace(spec, **unset)
