"""The PyTorch backend's settings: one frozen value per candidate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import (
    TORCH_ATTENTION,
    TORCH_KV_CACHES,
    TORCH_LOOPS,
    TORCH_PRECISIONS,
    TORCH_QUANTIZATIONS,
)

# What quantize_weights builds for a torchao quantization (torch and torch-cb candidates, by their
# backend's name); bump when it changes. It goes into those candidates' store keys and numerics
# keys, not their dicts or recipes, so that their stored results and quality probes are measured
# again while no other candidate's key changes. 1 (no tag): every Linear; 2: not lm_head.
TORCHAO_BUILD = 2
TORCHAO_QUANTIZATIONS = frozenset({"int8-dynamic", "int8-weight", "int4-weight", "fp8"})
TORCHAO_BACKENDS = frozenset({"torch", "torch-cb"})
INT4_GROUP_SIZE = 128  # inputs per int4-weight group (torchao's Int4WeightOnlyConfig group_size)


def build_key_tag(settings: object) -> dict[str, int]:
    """Keyed beside `settings` where what they build changed after stores were written."""
    backend, quantization = getattr(settings, "BACKEND", None), getattr(settings, "quantization", None)
    if backend in TORCHAO_BACKENDS and quantization in TORCHAO_QUANTIZATIONS:
        return {"torchao_build": TORCHAO_BUILD}
    return {}


@dataclass(frozen=True)
class TorchSettings:
    """PyTorch + HF generate: dtype, weight quantization, KV cache, compile, attention kernel."""

    BACKEND: ClassVar[str] = "torch"
    # added after stores and recipes were written: left out of keys and dicts at their default,
    # so that every candidate written before keeps its key
    KEYED_WHEN_SET: ClassVar[tuple[str, ...]] = ("step_interval_ms", "prefix_sharing", "compile_layers")

    precision: str = "fp32"
    quantization: str = "none"
    kv_cache: str = "dynamic"
    compile: bool = False
    attention: str = "sdpa"
    loop: str = "hf"
    # loop=slots: the least time from one decode step's start to the next (0: back to back). While
    # the SLO's TPOT allows, a paced loop steps less often with more requests in each step
    step_interval_ms: float = 0.0
    # loop=slots: keep finished requests' K/V and prefill only what a new prompt does not share
    # with them (or with a running request)
    prefix_sharing: bool = False
    # with compile, loop=graph or slots: compile one decoder layer and run every layer through its
    # graph (compile time that does not grow with depth), not the whole model as one graph
    compile_layers: bool = False

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "precision": TORCH_PRECISIONS,
                "quantization": TORCH_QUANTIZATIONS,
                "kv_cache": TORCH_KV_CACHES,
                "compile": (True, False),
                "attention": TORCH_ATTENTION,
                "loop": TORCH_LOOPS,
                "prefix_sharing": (True, False),
                "compile_layers": (True, False),
            },
        )
        if not 0 <= self.step_interval_ms < math.inf:  # inf: the slot loop's wait overflows
            raise ValueError(f"step_interval_ms must be finite and >= 0, got {self.step_interval_ms}")

    def probe_settings(self) -> dict[str, Any]:
        """The settings the quality probe's numbers depend on. The probe scores a forward pass
        (TorchEngine.score): a KV cache matters only when quantized (it is filled chunk by chunk),
        and compile and the decode loop act only inside generate."""
        settings = {
            "precision": self.precision,
            "quantization": self.quantization,
            "attention": self.attention,
        }
        if self.kv_cache.startswith(("quanto", "hqq")):
            settings["kv_cache"] = self.kv_cache
        return settings

    @property
    def generate_only_paths(self) -> bool:
        """Settings that act only inside generate, where the quality probe never looks: their
        greedy output is checked against the probed forward (backends/parity.py)."""
        # an offloaded static cache pads and masks like a static one, inside generate only
        static = self.kv_cache in ("static", "offloaded_static")
        return self.compile or self.loop != "hf" or static or self.attention == "sdpa_gqa"

    def label(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        parts.append(f"kv={self.kv_cache}")
        if self.compile:
            parts.append("compiled=layers" if self.compile_layers else "compiled")
        if self.attention != "sdpa":
            parts.append(self.attention)
        if self.loop != "hf":
            parts.append(f"loop={self.loop}")
        if self.step_interval_ms:
            parts.append(f"pace={self.step_interval_ms:g}ms")
        if self.prefix_sharing:
            parts.append("prefix")
        return " ".join(parts)
