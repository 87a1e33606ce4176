"""fp16 conversion of a model past protobuf's 2 GB limit (its weights in external data).

The Qwen2-0.5B shape exported in fp32 (~0.5B parameters x 4 bytes, or more): on the H200 (2026-12-04) its conversion failed with
`EncodeError: Failed to serialize proto`, because ORT's converter, given a loaded model, runs shape
inference on the serialized proto. A graph of three 0.72 GB initializers reproduces it in ~1 minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from optimizer.backends.onnx.export import MODEL_FILE  # noqa: E402
from optimizer.backends.onnx.quantize import fp16  # noqa: E402

ELEMENTS = 180_000_000  # per initializer: 3 x 720 MB in fp32, past 2 GiB together


@pytest.mark.slow
def test_a_model_past_2gb_converts_to_fp16(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fp32_dir = tmp_path / "fp32"
    fp32_dir.mkdir()
    weights = [
        numpy_helper.from_array(np.full(ELEMENTS, 1.0 + i, dtype=np.float32), f"w{i}") for i in range(3)
    ]
    nodes = [
        helper.make_node("Add", ["x", "w0"], ["h0"]),
        helper.make_node("Add", ["h0", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "w2"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [ELEMENTS]) for name in ("x", "y")]
    graph = helper.make_graph(nodes, "past-2gb", io[:1], io[1:], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(fp32_dir / MODEL_FILE), save_as_external_data=True, location=f"{MODEL_FILE}.data")
    del model, graph, weights
    assert (fp32_dir / f"{MODEL_FILE}.data").stat().st_size > 2**31

    out = fp16(fp32_dir)

    converted = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    halves = [t for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert sorted(t.name for t in halves) == ["w0", "w1", "w2"]
    # keep_io_types: the graph's boundary stays float32
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in converted.graph.output] == [TensorProto.FLOAT]
    assert (out / f"{MODEL_FILE}.data").stat().st_size == 3 * ELEMENTS * 2
