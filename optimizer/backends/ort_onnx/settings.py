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
    # added after stores and recipes were written: left out of keys and dicts at its default
    KEYED_WHEN_SET: ClassVar[tuple[str, ...]] = ("spinning",)

    provider: str = "cpu"
    precision: str = "fp32"
    quantization: str = "none"
    # ORT's intra-op threads busy-wait between operators (its default): less latency, but the
    # waiting burns CPU time; False lets them sleep (session.intra_op.allow_spinning=0)
    spinning: bool = True

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "provider": ONNX_PROVIDERS,
                "precision": ONNX_PRECISIONS,
                "quantization": ONNX_QUANTIZATIONS,
                "spinning": (True, False),
            },
        )

    def probe_settings(self) -> dict[str, Any]:
        """The settings the quality probe's numbers depend on: all but spinning, which changes how
        threads wait, not what they compute."""
        return {name: value for name, value in asdict(self).items() if name != "spinning"}

    def label(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.provider != "cpu":
            parts.append(self.provider)
        if not self.spinning:
            parts.append("no-spin")
        return " ".join(parts)
