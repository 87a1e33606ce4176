"""The llama.cpp backend's settings: one frozen value per candidate. The candidate's batch size is
the number of sequences decoded at once and its threads are llama.cpp's threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import LLAMACPP_KV_TYPES, LLAMACPP_WEIGHT_TYPES
from optimizer.errors import UserError

AS_SHIPPED = "gguf"  # the weight type of the model's own GGUF
# llama.cpp pads a sequence's KV cells to this many tokens: the engine sizes its context in these,
# and the memory check counts them
CONTEXT_GRANULE = 256


@dataclass(frozen=True)
class LlamaCppSettings:
    """A llama.cpp context over a GGUF: weight type, KV cache type, flash attention, batch sizes."""

    BACKEND: ClassVar[str] = "llamacpp"

    weight_type: str = AS_SHIPPED  # "gguf", or a llama-quantize type such as Q8_0 or Q4_K_M
    kv_type: str = "f16"  # K and V cache elements: f16, q8_0 or q4_0
    flash_attention: bool = True
    n_batch: int = 512  # most tokens per llama_decode call (a longer prefill is split)
    n_ubatch: int = 512  # tokens per compute micro-batch inside one call
    # keep a finished request's cells in its sequence id; a new request sharing a prefix with them
    # (a conversation's history, a system prompt) prefills only the rest: llama.cpp's prompt cache
    prefix_sharing: bool = False

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "weight_type": LLAMACPP_WEIGHT_TYPES,
                "kv_type": LLAMACPP_KV_TYPES,
                "flash_attention": (True, False),
                "prefix_sharing": (True, False),
            },
        )
        for name in ("n_batch", "n_ubatch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UserError(f"settings.{name}", f"is {value!r}", "use a token count >= 1, e.g. 512")

    @property
    def requantized(self) -> bool:
        return self.weight_type != AS_SHIPPED

    def probe_settings(self) -> dict[str, Any]:
        """The numerics: weights, KV cache elements and the attention kernel. Batch sizes,
        scheduling and prefix reuse do not change what the quality probe sees."""
        return {
            "weight_type": self.weight_type,
            "kv_type": self.kv_type,
            "flash_attention": self.flash_attention,
        }

    def label(self) -> str:
        parts = [self.weight_type]
        if self.kv_type != "f16":
            parts.append(f"kv-{self.kv_type}")
        if not self.flash_attention:
            parts.append("no-fa")
        if (self.n_batch, self.n_ubatch) != (512, 512):
            parts.append(f"nb{self.n_batch}/{self.n_ubatch}")
        if self.prefix_sharing:
            parts.append("prefix")
        return " ".join(parts)
