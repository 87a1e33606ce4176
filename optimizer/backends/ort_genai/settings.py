"""The onnxruntime-genai backend's settings.

A frozen value with canonical fields: options that do not apply to a precision must keep their
defaults, so one build has exactly one key in the store and the caches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import (
    GENAI_ACCURACY_LEVELS,
    GENAI_ALGORITHMS,
    GENAI_BLOCK_SIZES,
    GENAI_PRECISIONS,
    GENAI_PROVIDERS,
)
from optimizer.errors import UserError

# The most sequences one Generator takes (kMaxBatchSize in 0.18's generators.cpp): a larger batch
# is refused when the Generator starts, after the build (found on the H200, 2026-12-04, at b64).
GENERATOR_MAX_BATCH = 32
WEIGHT_QUANTIZED = ("int4", "int8")
# (algorithm, block_size, accuracy_level, int8_lm_head) of a build without weight quantization
NO_WEIGHT_OPTIONS = ("default", 32, 0, False)


@dataclass(frozen=True)
class OrtGenaiSettings:
    """An onnxruntime-genai build: model builder precision and weight-only quantization options,
    run on one execution provider. Threads come from the candidate (intra-op threads)."""

    BACKEND: ClassVar[str] = "ort-genai"
    # added after stores and recipes were written: left out of keys and dicts at its default
    KEYED_WHEN_SET: ClassVar[tuple[str, ...]] = ("spinning",)

    provider: str = "cpu"
    precision: str = "fp32"
    algorithm: str = "default"  # weight-only quantization method (int4/int8)
    block_size: int = 32
    accuracy_level: int = 0  # MatMulNBits compute type; 0 = unset (fp32)
    int8_lm_head: bool = False  # int4 body with the last MatMul (lm_head) in int8
    # the session's intra-op threads busy-wait between operators (ORT's default) or sleep; not
    # a build option: one build serves both
    spinning: bool = True

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "provider": GENAI_PROVIDERS,
                "precision": GENAI_PRECISIONS,
                "algorithm": GENAI_ALGORITHMS,
                "block_size": GENAI_BLOCK_SIZES,
                "accuracy_level": GENAI_ACCURACY_LEVELS,
                "int8_lm_head": (True, False),
                "spinning": (True, False),
            },
        )
        if self.precision not in WEIGHT_QUANTIZED and self.weight_options() != NO_WEIGHT_OPTIONS:
            raise UserError(
                "settings.precision",
                f"{self.precision} has no weight quantization, so algorithm/block_size/accuracy_level/int8_lm_head do not apply",
                "keep their defaults (default, 32, 0, false) or use precision int4 / int8",
            )
        if self.int8_lm_head and self.precision != "int4":
            raise UserError("settings.int8_lm_head", "applies to int4 builds only", "set it to false")

    def weight_options(self) -> tuple[str, int, int, bool]:
        return (self.algorithm, self.block_size, self.accuracy_level, self.int8_lm_head)

    def builder_extra_options(self) -> dict[str, str]:
        """`--extra_options` for `python -m onnxruntime_genai.models.builder`, always explicit."""
        if self.precision not in WEIGHT_QUANTIZED:
            return {}
        options = {
            "algo_config": self.algorithm,
            "block_size": str(self.block_size),
            "accuracy_level": str(self.accuracy_level),
        }
        if self.int8_lm_head:
            options["matmul_mixed_precision"] = "last_matmul:int8"
        return options

    def probe_settings(self) -> dict[str, Any]:
        """The settings the quality probe's numbers depend on: all but spinning, which changes how
        threads wait, not what they compute."""
        return {name: value for name, value in asdict(self).items() if name != "spinning"}

    def label(self) -> str:
        parts = [self.precision]
        if self.precision in WEIGHT_QUANTIZED:
            parts += [self.algorithm, f"g{self.block_size}", f"acc{self.accuracy_level}"]
            if self.int8_lm_head:
                parts.append("lm_head=int8")
        if self.provider != "cpu":
            parts.append(self.provider)
        if not self.spinning:
            parts.append("no-spin")
        return " ".join(parts)
