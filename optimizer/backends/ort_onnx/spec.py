"""What the search knows of the ONNX Runtime backend: its settings grid, validity rules, memory
footprint and matmul arithmetic. Imports no runtime: `build` loads the backend."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import (
    PRECISION_BYTES,
    Engine,
    Footprint,
    MovedBytes,
    precision_kind,
    unpadded_stream_reason,
)
from optimizer.backends.installed import missing_onnx_runtime
from optimizer.backends.onnx.trt_profile import row_reason
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec


class OrtOnnxSpec:
    name = OrtOnnxSettings.BACKEND
    settings_type = OrtOnnxSettings

    def settings_for(self, space: SpaceConfig) -> Iterator[OrtOnnxSettings]:
        o = space.ort_onnx
        for provider, precision, quantization, spinning in itertools.product(
            o.providers, o.precisions, o.quantizations, o.spinning
        ):
            yield OrtOnnxSettings(provider, precision, quantization, spinning)

    def exclusion_reason(self, settings: OrtOnnxSettings, target: TargetSpec) -> str | None:
        return onnx_rule(settings, target)

    def workload_reason(self, settings: OrtOnnxSettings, batch_size: int, serving: bool) -> str | None:
        return unpadded_stream_reason(batch_size, serving)

    def row_reason(self, settings: OrtOnnxSettings, tokens: int) -> str | None:
        # the TensorRT provider's profile bounds a row (OrtSteps checks it); other providers do not
        return row_reason(tokens) if settings.provider == "tensorrt" else None

    def footprint(self, settings: OrtOnnxSettings, num_layers: int) -> Footprint:
        act = PRECISION_BYTES[settings.precision] if settings.provider == "cuda" else 4.0
        weight = 1.0 if settings.quantization != "none" else act
        # The KV cache crosses the graph's boundary, which stays float32 (keep_io_types). The
        # quantizers take weight MatMuls (lm_head among them), not the embedding's Gather: it keeps
        # the model's float (fp32 in the int8 builds). A tied lm_head is a second matrix: the
        # export's constant folding turns its Transpose of the embedding into an initializer.
        # OrtSteps.step binds the held past as input and a new present as output: both are alive
        # through the last decode step.
        return Footprint(weight, act, 4.0, embedding_bytes=act, tied_holds="both", kv_copies=2)

    def moved_bytes(self, settings: OrtOnnxSettings, num_layers: int) -> MovedBytes:
        """The precision's own bytes on every provider (TensorRT's EP runs fp16 weights as fp16 even
        where the footprint keeps fp32 buffers), one byte per quantized weight."""
        own = PRECISION_BYTES[settings.precision]
        return MovedBytes(1.0 if settings.quantization != "none" else own, own)

    def matmul_kind(self, settings: OrtOnnxSettings) -> str:
        """ONNX Runtime's quantized MatMuls compute in int8."""
        return precision_kind("int8" if settings.quantization != "none" else settings.precision)

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        from optimizer.backends.ort_onnx.backend import OrtOnnxBackend  # onnxruntime loads here

        return OrtOnnxBackend().build(model, candidate, target, workdir)


SPEC = OrtOnnxSpec()


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
    # both GPU providers run fp16 kernels (TensorRT's trt_fp16_enable, CUDA's fp16 conversion)
    if s.precision == "fp16" and not target.fp16:
        return "fp16 has no fast kernels on this target"
    return missing_onnx_runtime(s.provider)
