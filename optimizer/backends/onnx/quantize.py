"""ONNX Runtime quantization and fp16 conversion of the exported decoder, each cached beside it.

Only the weight MatMuls (those whose second input is an initializer: the Linear layers and the
lm_head) are quantized; the attention MatMuls multiply two activations and stay in float.

- int8-dynamic: `quantize_dynamic`, int8 per-channel weights, activations quantized at run time.
- int8-static: `quantize_static` to a QDQ model (int8 symmetric, per-channel weights), activation
  ranges calibrated on the packaged Wikipedia text's *workload* split, never the held-out quality
  split that the candidate is judged on. The QDQ model is also what TensorRT takes for int8.
- fp16: `onnxruntime.transformers.float16` conversion, for GPU execution providers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.backends.artifacts import cached_artifact
from optimizer.backends.onnx.export import (
    INPUT_IDS,
    LOGITS_POSITIONS,
    MODEL_FILE,
    DecoderLayout,
    layout_of,
)
from optimizer.measure.text import CALIBRATION_TEXT, calibration_windows, load_text
from optimizer.model import ModelSpec

log = logging.getLogger(__name__)

CALIBRATION_SEQUENCES = 8
CALIBRATION_TOKENS = 64  # prefill length; one decode step follows each prefill


def weight_matmuls(model_file: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is an initializer (a weight)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers]


@contextmanager
def sys_path_kept() -> Iterator[None]:
    """Import ORT's quantization tools inside this block. `onnxruntime.transformers` (which
    `onnxruntime.quantization` imports) appends its own folder to sys.path, and that folder holds
    an `optimizer.py`: processes spawned afterwards copy our sys.path and, under an editable
    install, import that file instead of this package. Its modules import their siblings at load
    time, so restoring sys.path afterwards is safe.

    The folder is put back for the block: the package appends it only when first imported, and a
    sibling first imported later (`onnx_utils`, by `onnxruntime.quantization`, after `float16` was
    imported for an fp16 conversion) still needs it: `No module named 'fusion_utils'` otherwise."""
    saved = list(sys.path)
    try:
        import onnxruntime.transformers as ort_transformers

        folder = str(Path(ort_transformers.__file__).parent)
        if folder not in sys.path:
            sys.path.append(folder)
        yield
    finally:
        sys.path[:] = saved


def variant_dir(fp32_dir: Path, name: str) -> Path:
    return fp32_dir.parent / name


def dynamic_int8(fp32_dir: Path) -> Path:
    def build(tmp: Path) -> dict[str, Any]:
        with sys_path_kept():
            from onnxruntime.quantization import QuantType, quantize_dynamic

        nodes = weight_matmuls(fp32_dir / MODEL_FILE)
        quantize_dynamic(
            fp32_dir / MODEL_FILE,
            tmp / MODEL_FILE,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            use_external_data_format=True,
        )
        return {"source": str(fp32_dir), "quantized_matmuls": len(nodes)}

    return cached_artifact(variant_dir(fp32_dir, "int8-dynamic"), build, "ONNX int8 dynamic quantization")


def static_int8_qdq(fp32_dir: Path, model: ModelSpec) -> Path:
    def build(tmp: Path) -> dict[str, Any]:
        with sys_path_kept():
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        nodes = weight_matmuls(fp32_dir / MODEL_FILE)
        feeds, text_sha256 = calibration_feeds(fp32_dir / MODEL_FILE, model)
        quantize_static(
            fp32_dir / MODEL_FILE,
            tmp / MODEL_FILE,
            FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QInt8,  # symmetric int8 activations: what TensorRT accepts
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        return {
            "source": str(fp32_dir),
            "quantized_matmuls": len(nodes),
            "calibration": {
                "text": CALIBRATION_TEXT,
                "split": "workload",
                "text_sha256": text_sha256,
                "sequences": CALIBRATION_SEQUENCES,
                "tokens": CALIBRATION_TOKENS,
            },
        }

    return cached_artifact(variant_dir(fp32_dir, "int8-static"), build, "ONNX int8 static QDQ quantization")


def fp16(fp32_dir: Path) -> Path:
    def build(tmp: Path) -> dict[str, Any]:
        import onnx

        with sys_path_kept():
            from onnxruntime.transformers.float16 import convert_float_to_float16

        # Given a path, the converter infers shapes file to file (onnx's infer_shapes_path); given
        # a loaded proto it serializes the whole model in memory, which protobuf refuses past 2 GB
        # (EncodeError on the H200 for the Qwen2-0.5B shape, 2026-12-04).
        # keep_io_types: logits and the KV cache stay float32 at the boundary, as the loop expects
        converted = convert_float_to_float16(str(fp32_dir / MODEL_FILE), keep_io_types=True)
        onnx.save(converted, str(tmp / MODEL_FILE), save_as_external_data=True, location=f"{MODEL_FILE}.data")
        return {"source": str(fp32_dir)}

    return cached_artifact(variant_dir(fp32_dir, "fp16"), build, "ONNX fp16 conversion")


class FeedReader:
    """An onnxruntime.quantization CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(model_file: Path, model: ModelSpec) -> tuple[list[dict[str, np.ndarray]], str]:
    """Prefill feeds of the workload text plus one decode step each (with the prefill's cache),
    so both shapes the generation loop runs are calibrated. Returns (feeds, text sha256)."""
    import onnxruntime as ort

    windows = calibration_windows(
        model.path, model.trust_remote_code, CALIBRATION_TOKENS + 1, CALIBRATION_SEQUENCES
    )
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    layout = layout_of([(i.name, i.shape) for i in session.get_inputs()])
    feeds = []
    for window in windows:
        ids = np.array([window], dtype=np.int64)
        prefill = {
            INPUT_IDS: ids[:, :-1],
            LOGITS_POSITIONS: np.array([CALIBRATION_TOKENS - 1], dtype=np.int64),
            **empty_past(layout, 1),
        }
        outputs = session.run(layout.present_names, prefill)
        decode = {
            INPUT_IDS: ids[:, -1:],
            LOGITS_POSITIONS: np.array([0], dtype=np.int64),
            **dict(zip(layout.past_names, outputs, strict=True)),
        }
        feeds += [prefill, decode]
    return feeds, load_text(CALIBRATION_TEXT).sha256


def empty_past(layout: DecoderLayout, batch_size: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    shape = layout.empty_past_shape(batch_size)
    return {name: np.zeros(shape, dtype=dtype) for name in layout.past_names}
