"""The continuous-batching backend's settings: one frozen value per candidate. The candidate's
batch size is the most sequences decoded at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import CB_ATTENTION, CB_PAGE_SIZES, CB_PRECISIONS, CB_QUANTIZATIONS
from optimizer.errors import UserError


@dataclass(frozen=True)
class ContinuousBatchingSettings:
    """transformers' `init_continuous_batching`: numerics, kernels, and how the paged cache is used."""

    BACKEND: ClassVar[str] = "torch-cb"

    precision: str = "bf16"
    quantization: str = "none"
    attention: str = "sdpa"
    compile: bool = False
    max_batch_tokens: int = 256  # tokens per forward; longer prefills are chunked
    kv_cache_tokens: int = 0  # the cache's size in tokens; 0: the batch at the longest request
    prefix_sharing: bool = False  # reuse the cached blocks of a prompt prefix seen before
    page_size: int = 64  # tokens per cache block: the granularity of prefix sharing
    kv_offload_gib: float = 0.0  # host memory for evicted requests' KV (0: recompute instead)

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "precision": CB_PRECISIONS,
                "quantization": CB_QUANTIZATIONS,
                "attention": CB_ATTENTION,
                "compile": (True, False),
                "prefix_sharing": (True, False),
                "page_size": CB_PAGE_SIZES,
            },
        )
        for name, low in (("max_batch_tokens", 16), ("kv_cache_tokens", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise UserError(f"settings.{name}", f"is {value!r}", f"use an integer >= {low}")
        if isinstance(self.kv_offload_gib, bool) or not isinstance(self.kv_offload_gib, (int, float)):
            raise UserError("settings.kv_offload_gib", f"is {self.kv_offload_gib!r}", "use GiB >= 0, e.g. 0")
        if self.kv_offload_gib < 0:
            raise UserError("settings.kv_offload_gib", f"is {self.kv_offload_gib}", "use GiB >= 0, e.g. 0")

    def probe_settings(self) -> dict[str, Any]:
        """The quality probe scores a plain forward: the cache and the scheduling do not change it."""
        return {"precision": self.precision, "quantization": self.quantization, "attention": self.attention}

    def label(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.attention != "sdpa":
            parts.append(self.attention)
        if self.compile:
            parts.append("compiled")
        parts.append(f"mbt{self.max_batch_tokens}")
        if self.kv_cache_tokens:
            parts.append(f"kv{self.kv_cache_tokens}")
        if self.prefix_sharing:
            parts.append("prefix")
        if self.page_size != 64:
            parts.append(f"page{self.page_size}")
        if self.kv_offload_gib:
            parts.append(f"offload{self.kv_offload_gib:g}G")
        return " ".join(parts)
