"""ONNX Runtime quantization and fp16 conversion of the exported decoder, each cached beside it.

Only the weight MatMuls (those whose second input is an initializer: the Linear layers and the
lm_head) are quantized; the attention MatMuls multiply two activations and stay in float.

- int8-dynamic: `quantize_dynamic`, int8 per-channel weights, activations quantized at run time.
- int8-static: `quantize_static` to a QDQ model (int8 symmetric, per-channel weights), activation
  ranges calibrated on the packaged Wikipedia text's *workload* split, never the held-out quality
  split that the candidate is judged on. The QDQ model is also what TensorRT takes for int8. The
  MatMuls' inputs are quantized, not their outputs (TensorRT's recommended Q/DQ placement): a
  quantized lm_head output would put the logits on an int8 grid (ties in the greedy argmax).
- fp16: `onnxruntime.transformers.float16` conversion, for GPU execution providers.

A variant's directory is keyed by the export's key, ONNX Runtime's version and, for int8-static,
the calibration (text sha256, sequences, tokens and the sha256 of the calibration windows' token
ids): an upgrade, another text or another tokenizer (which the export's key does not cover)
builds it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.backends.artifacts import artifact_key, cached_artifact
from optimizer.backends.installed import ONNX_RUNTIME, distribution_version
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
VARIANT_FORMAT = 1  # bump when a conversion's options change: old variants are then not reused
# one variant's own format, so the others stay reused; int8-static 2: MatMul outputs stay float
VARIANT_FORMATS = {"int8-static": 2}
# the settings whose candidates need the int8-static (QDQ) model
STATIC_INT8_FIELD = "space.ort_onnx.quantizations (int8-static) or space.tensorrt.precisions (int8)"


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


def variant_dir(fp32_dir: Path, name: str, identity: dict[str, Any] | None = None) -> Path:
    """Beside the export (whose key it inherits), keyed by what else decides the variant."""
    key = artifact_key(variant_identity(name) if identity is None else identity)
    return fp32_dir.parent / f"{name}-{key}"


def variant_identity(name: str, windows: list[list[int]] | None = None) -> dict[str, Any]:
    """ONNX Runtime writes every variant (its quantizers, its fp16 converter); the static one also
    depends on its calibration. `windows`: the static one's calibration token ids, which
    `static_int8_qdq` always passes: the export's key covers the weights and config.json, not the
    tokenizer that makes them."""
    identity: dict[str, Any] = {
        "format": VARIANT_FORMATS.get(name, VARIANT_FORMAT),
        "onnxruntime": distribution_version(*ONNX_RUNTIME),
    }
    if name == "int8-static":
        identity["calibration"] = {
            "text": CALIBRATION_TEXT,
            "split": "workload",  # never the held-out quality split
            "text_sha256": load_text(CALIBRATION_TEXT, STATIC_INT8_FIELD).sha256,
            "sequences": CALIBRATION_SEQUENCES,
            "tokens": CALIBRATION_TOKENS,
        }
        if windows is not None:
            identity["calibration"]["windows_sha256"] = windows_sha256(windows)
    return identity


def windows_sha256(windows: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(windows, separators=(",", ":")).encode()).hexdigest()


def cached_variant(
    fp32_dir: Path,
    name: str,
    convert: Callable[[Path], dict[str, Any]],
    what: str,
    windows: list[list[int]] | None = None,
) -> Path:
    """The variant `name` of the export, made by `convert(tmp_dir) -> provenance` unless cached."""
    identity = variant_identity(name, windows)  # before any work: the calibration text may be missing

    def build(tmp: Path) -> dict[str, Any]:
        return {"source": str(fp32_dir), **convert(tmp), **identity}

    return cached_artifact(variant_dir(fp32_dir, name, identity), build, what)


def dynamic_int8(fp32_dir: Path) -> Path:
    def convert(tmp: Path) -> dict[str, Any]:
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
        return {"quantized_matmuls": len(nodes)}

    return cached_variant(fp32_dir, "int8-dynamic", convert, "ONNX int8 dynamic quantization")


def static_int8_qdq(fp32_dir: Path, model: ModelSpec) -> Path:
    # tokenized on every call, cache hit or not: the windows key the variant
    windows = calibration_windows(
        model.path, model.trust_remote_code, CALIBRATION_TOKENS + 1, CALIBRATION_SEQUENCES, STATIC_INT8_FIELD
    )

    def convert(tmp: Path) -> dict[str, Any]:
        with sys_path_kept():
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        nodes = weight_matmuls(fp32_dir / MODEL_FILE)
        quantize_static(
            fp32_dir / MODEL_FILE,
            tmp / MODEL_FILE,
            FeedReader(calibration_feeds(fp32_dir / MODEL_FILE, windows)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QInt8,  # symmetric int8 activations: what TensorRT accepts
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=True,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # by default the QDQ quantizer also quantizes each MatMul's output: the logits too
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )
        return {"quantized_matmuls": len(nodes)}

    return cached_variant(fp32_dir, "int8-static", convert, "ONNX int8 static QDQ quantization", windows)


def fp16(fp32_dir: Path) -> Path:
    def convert(tmp: Path) -> dict[str, Any]:
        import onnx

        with sys_path_kept():
            from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: logits and the KV cache stay float32 at the boundary, as the loop expects
        converted = convert_float_to_float16(
            shaped_model(fp32_dir, tmp), keep_io_types=True, disable_shape_infer=True
        )
        onnx.save(converted, str(tmp / MODEL_FILE), save_as_external_data=True, location=f"{MODEL_FILE}.data")
        return {}

    return cached_variant(fp32_dir, "fp16", convert, "ONNX fp16 conversion")


def shaped_model(fp32_dir: Path, staging: Path) -> Any:
    """The export with inferred shapes, loaded with its weights; the inference's file goes into
    the variant's `staging` folder. Inferred file to file (onnx's infer_shapes_path): in memory,
    protobuf refuses a model past 2 GB (EncodeError on the H200 for the Qwen2-0.5B shape,
    2026-12-04). Not by ORT's converter given the path: it writes that file beside the export,
    in another artifact's folder, where a killed conversion leaves it."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    inferred = staging / f"shapes-{MODEL_FILE}"
    onnx.shape_inference.infer_shapes_path(str(fp32_dir / MODEL_FILE), str(inferred))
    model = onnx.load(str(inferred), load_external_data=False)
    inferred.unlink()  # not part of the variant
    load_external_data_for_model(model, str(fp32_dir))  # its locations are relative to the export
    return model


class FeedReader:
    """An onnxruntime.quantization CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(model_file: Path, windows: list[list[int]]) -> list[dict[str, np.ndarray]]:
    """Prefill feeds of the workload text's `windows` plus one decode step each (with the
    prefill's cache), so both shapes the generation loop runs are calibrated."""
    import onnxruntime as ort

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
    return feeds


def empty_past(layout: DecoderLayout, batch_size: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    shape = layout.empty_past_shape(batch_size)
    return {name: np.zeros(shape, dtype=dtype) for name in layout.past_names}
