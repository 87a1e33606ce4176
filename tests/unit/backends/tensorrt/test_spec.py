"""Native TensorRT settings: labels and target rules."""

from __future__ import annotations

import pytest

from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.backends.tensorrt.spec import tensorrt_rule


def test_label_is_the_precision() -> None:
    assert TensorRTSettings("int8").label() == "int8"


def test_tensorrt_rules(make_target, installed, cpu_ort) -> None:
    installed(cpu_ort | {"tensorrt"})
    assert "NVIDIA GPU" in str(tensorrt_rule(TensorRTSettings(), make_target()))
    gpu = make_target(kind="cuda")
    assert tensorrt_rule(TensorRTSettings("int8"), gpu) is None
    installed(cpu_ort)
    assert "wattsmith[tensorrt]" in str(tensorrt_rule(TensorRTSettings(), gpu))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("module", ["onnxruntime", "onnx", "onnxscript"])
def test_every_precision_needs_what_the_onnx_export_runs(
    make_target, installed, cpu_ort, precision: str, module: str
) -> None:
    """The engine is built from our ONNX export, which ONNX Runtime constant-folds: without it
    (e.g. after the documented `pip uninstall onnxruntime`) no precision can be built."""
    installed(cpu_ort - {module} | {"tensorrt"})
    reason = tensorrt_rule(TensorRTSettings(precision), make_target(kind="cuda"))
    assert reason is not None and "TensorRT" in reason and module in reason and "wattsmith[gpu]" in reason
