"""The PyTorch backend's settings: one frozen value per candidate."""

from __future__ import annotations

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


@dataclass(frozen=True)
class TorchSettings:
    """PyTorch + HF generate: dtype, weight quantization, KV cache, compile, attention kernel."""

    BACKEND: ClassVar[str] = "torch"

    precision: str = "fp32"
    quantization: str = "none"
    kv_cache: str = "dynamic"
    compile: bool = False
    attention: str = "sdpa"
    loop: str = "hf"

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
            },
        )

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
            parts.append("compiled")
        if self.attention != "sdpa":
            parts.append(self.attention)
        if self.loop != "hf":
            parts.append(f"loop={self.loop}")
        return " ".join(parts)
