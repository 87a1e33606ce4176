"""Native TensorRT settings: labels and target rules."""

from __future__ import annotations

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
