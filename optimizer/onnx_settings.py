"""Settings of the ONNX Runtime and TensorRT backends, and the rules that say which a target can run.

Each settings type is a frozen value with canonical fields: options that do not apply to a
precision must keep their defaults, so one build has exactly one key in the store and the caches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from optimizer.config import (
    GENAI_ACCURACY_LEVELS,
    GENAI_ALGORITHMS,
    GENAI_BLOCK_SIZES,
    GENAI_PRECISIONS,
    GENAI_PROVIDERS,
    ONNX_PRECISIONS,
    ONNX_PROVIDERS,
    ONNX_QUANTIZATIONS,
    TENSORRT_PRECISIONS,
)
from optimizer.errors import UserError
from optimizer.runtimes import missing_genai, missing_onnx_runtime, missing_tensorrt
from optimizer.target import TargetSpec


def check_choices(settings: Any, allowed: Mapping[str, Sequence[object]]) -> None:
    """Raise a UserError naming the first field whose value is not one of its allowed values."""
    for name, values in allowed.items():
        value = getattr(settings, name)
        # by type and value: "false", 0 or True must not pass as False, 4 or 32
        if not any(type(value) is type(v) and value == v for v in values):
            raise UserError(f"settings.{name}", f"unknown value {value!r}", f"use one of {list(values)}")


WEIGHT_QUANTIZED = ("int4", "int8")
# (algorithm, block_size, accuracy_level, int8_lm_head) of a build without weight quantization
NO_WEIGHT_OPTIONS = ("default", 32, 0, False)


@dataclass(frozen=True)
class OrtGenaiSettings:
    """An onnxruntime-genai build: model builder precision and weight-only quantization options,
    run on one execution provider. Threads come from the candidate (intra-op threads)."""

    BACKEND: ClassVar[str] = "ort-genai"

    provider: str = "cpu"
    precision: str = "fp32"
    algorithm: str = "default"  # weight-only quantization method (int4/int8)
    block_size: int = 32
    accuracy_level: int = 0  # MatMulNBits compute type; 0 = unset (fp32)
    int8_lm_head: bool = False  # int4 body with the last MatMul (lm_head) in int8

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
        """Every setting of this backend changes the numbers its quality probe sees."""
        return asdict(self)

    def label(self) -> str:
        parts = [self.precision]
        if self.precision in WEIGHT_QUANTIZED:
            parts += [self.algorithm, f"g{self.block_size}", f"acc{self.accuracy_level}"]
            if self.int8_lm_head:
                parts.append("lm_head=int8")
        if self.provider != "cpu":
            parts.append(self.provider)
        return " ".join(parts)


@dataclass(frozen=True)
class OrtOnnxSettings:
    """Our ONNX export of the decoder (KV cache as flat inputs/outputs), optionally quantized by
    ONNX Runtime, in a session on one execution provider.

    On `tensorrt`, fp16 and int8 are TensorRT builder flags (int8 needs the QDQ model: quantization
    int8-static); on `cuda`, fp16 is an fp16 conversion of the model.
    """

    BACKEND: ClassVar[str] = "ort-onnx"

    provider: str = "cpu"
    precision: str = "fp32"
    quantization: str = "none"

    def __post_init__(self) -> None:
        check_choices(
            self,
            {"provider": ONNX_PROVIDERS, "precision": ONNX_PRECISIONS, "quantization": ONNX_QUANTIZATIONS},
        )

    def probe_settings(self) -> dict[str, Any]:
        """Every setting of this backend changes the numbers its quality probe sees."""
        return asdict(self)

    def label(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.provider != "cpu":
            parts.append(self.provider)
        return " ".join(parts)


@dataclass(frozen=True)
class TensorRTSettings:
    """A native TensorRT engine built from the exported ONNX decoder (int8: from the QDQ model)."""

    BACKEND: ClassVar[str] = "tensorrt"

    precision: str = "fp16"

    def __post_init__(self) -> None:
        check_choices(self, {"precision": TENSORRT_PRECISIONS})

    def probe_settings(self) -> dict[str, Any]:
        """Every setting of this backend changes the numbers its quality probe sees."""
        return asdict(self)

    def label(self) -> str:
        return self.precision


def genai_rule(s: OrtGenaiSettings, target: TargetSpec) -> str | None:
    if s.provider == "cuda" and not target.is_cuda:
        return "the CUDA execution provider needs a GPU target"
    if s.provider == "cpu" and target.is_cuda:
        return "a CPU execution provider on a GPU target measures the wrong device"
    if s.precision in ("fp16", "bf16") and s.provider == "cpu":
        return f"the model builder makes {s.precision} models for GPUs only"
    if s.precision == "bf16" and not target.bf16:
        return "target has no native bf16"
    return missing_genai(s.provider)


def onnx_rule(s: OrtOnnxSettings, target: TargetSpec) -> str | None:
    if s.provider != "cpu" and not target.is_cuda:
        return f"the {s.provider} execution provider needs a GPU target"
    if s.provider == "cpu" and target.is_cuda:
        return "a CPU execution provider on a GPU target measures the wrong device"
    if s.precision == "fp16" and s.provider == "cpu":
        return "fp16 has no fast kernels on the CPU execution provider"
    if s.provider == "tensorrt" and s.quantization == "int8-dynamic":
        return "TensorRT takes int8 from a QDQ model (int8-static), not dynamic quantization"
    if s.provider == "cuda" and s.quantization != "none":
        return "the CUDA execution provider runs int8 through TensorRT only: use provider tensorrt"
    if s.precision == "fp16" and s.quantization == "int8-dynamic":
        return "dynamic int8 quantization is made from the fp32 model"
    return missing_onnx_runtime(s.provider)


def tensorrt_rule(s: TensorRTSettings, target: TargetSpec) -> str | None:
    if not target.is_cuda:
        return "TensorRT engines need an NVIDIA GPU target"
    if s.precision == "fp16" and not target.fp16:
        return "target has no fp16"
    if s.precision == "int8":
        # the QDQ model is calibrated with ONNX Runtime before TensorRT parses it
        reason = missing_onnx_runtime("cpu")
        if reason:
            return reason
    return missing_tensorrt()
