"""ONNX Runtime settings: labels and target rules."""

from __future__ import annotations

from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.ort_onnx.spec import onnx_rule


def test_labels_name_what_differs() -> None:
    assert OrtOnnxSettings().label() == "fp32"
    assert (
        OrtOnnxSettings(quantization="int8-static", provider="tensorrt").label()
        == "fp32 int8-static tensorrt"
    )


def test_onnx_rules(make_target, installed, cpu_ort) -> None:
    cpu, gpu = make_target(), make_target(kind="cuda")
    installed(cpu_ort)
    assert onnx_rule(OrtOnnxSettings(quantization="int8-static"), cpu) is None
    assert "fp16" in str(onnx_rule(OrtOnnxSettings(precision="fp16"), cpu))
    assert "GPU target" in str(onnx_rule(OrtOnnxSettings(provider="tensorrt"), cpu))
    assert "onnxruntime-gpu" in str(onnx_rule(OrtOnnxSettings(provider="cuda", precision="fp16"), gpu))
    trt_dynamic = OrtOnnxSettings(provider="tensorrt", quantization="int8-dynamic")
    assert "QDQ" in str(onnx_rule(trt_dynamic, gpu))
    installed(cpu_ort, {"onnxruntime-gpu"})
    assert onnx_rule(OrtOnnxSettings(provider="cuda", precision="fp16"), gpu) is None
    assert "TensorRT libraries" in str(onnx_rule(OrtOnnxSettings(provider="tensorrt"), gpu))
    installed(cpu_ort | {"tensorrt"}, {"onnxruntime-gpu"})
    assert onnx_rule(OrtOnnxSettings(provider="tensorrt", quantization="int8-static"), gpu) is None
    installed({"onnxruntime", "onnx"})
    assert "onnxscript" in str(onnx_rule(OrtOnnxSettings(), cpu))
