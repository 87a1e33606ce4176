"""What the search knows of the native TensorRT backend: its settings grid, validity rules,
memory footprint and matmul arithmetic. Imports no runtime: `build` loads the backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import Engine, Footprint, MovedBytes, precision_kind, unpadded_stream_reason
from optimizer.backends.installed import missing_tensorrt
from optimizer.backends.onnx.trt_profile import row_reason
from optimizer.backends.tensorrt.settings import TensorRTSettings

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


class TensorRTSpec:
    name = TensorRTSettings.BACKEND
    settings_type = TensorRTSettings

    def settings_for(self, space: SpaceConfig) -> Iterator[TensorRTSettings]:
        yield from (TensorRTSettings(precision) for precision in space.tensorrt.precisions)

    def exclusion_reason(self, settings: TensorRTSettings, target: TargetSpec) -> str | None:
        return tensorrt_rule(settings, target)

    def workload_reason(self, settings: TensorRTSettings, batch_size: int, serving: bool) -> str | None:
        return unpadded_stream_reason(batch_size, serving)

    def row_reason(self, settings: TensorRTSettings, tokens: int) -> str | None:
        return row_reason(tokens)

    def footprint(self, settings: TensorRTSettings, num_layers: int) -> Footprint:
        # the engine's inputs and outputs (KV cache included) stay fp32; fp16/int8 are inside it.
        # int8: the QDQ model's embedding (a Gather) has no Q/DQ nodes, so it is not int8 but runs
        # at the width of the engine's other layers: fp16 where the target has it (builder_flags),
        # fp32 where not. No target reaches here, so the fp32 width counts (a footprint must not
        # understate; the engine itself is unmeasured). A tied lm_head is a second matrix: the
        # ONNX it is built from holds lm_head's folded Transpose of the embedding as an
        # initializer of its own (as ort-onnx's footprint says), int8 in the QDQ
        embedding = WEIGHT_BYTES["fp32"] if settings.precision == "int8" else None
        # TensorRTSteps.step allocates the present outputs while the past inputs are held: two KVs
        return Footprint(
            WEIGHT_BYTES[settings.precision],
            4.0,
            4.0,
            embedding_bytes=embedding,
            tied_holds="both",
            kv_copies=2,
        )

    def moved_bytes(self, settings: TensorRTSettings, num_layers: int) -> MovedBytes:
        """Weights at the engine's precision; the KV at no more than that either (its fp32 I/O
        buffers are the footprint's, and a later engine may keep them narrower)."""
        weight = WEIGHT_BYTES[settings.precision]
        return MovedBytes(weight, weight)

    def matmul_kind(self, settings: TensorRTSettings) -> str:
        return precision_kind(settings.precision)

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        from optimizer.backends.tensorrt.backend import TensorRTBackend  # tensorrt loads here

        return TensorRTBackend().build(model, candidate, target, workdir)


SPEC = TensorRTSpec()


def tensorrt_rule(s: TensorRTSettings, target: TargetSpec) -> str | None:
    if not target.is_cuda:
        return "TensorRT engines need an NVIDIA GPU target"
    if s.precision == "fp16" and not target.fp16:
        return "target has no fp16"
    # every precision: the export (and int8's calibrated QDQ model) runs ONNX Runtime on the CPU
    return missing_tensorrt()
