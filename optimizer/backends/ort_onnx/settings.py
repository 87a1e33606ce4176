"""The ONNX Runtime backend's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import ONNX_PRECISIONS, ONNX_PROVIDERS, ONNX_QUANTIZATIONS


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
