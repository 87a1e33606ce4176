"""The native TensorRT backend's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from optimizer.backends.base import check_choices
from optimizer.config import TENSORRT_PRECISIONS


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
