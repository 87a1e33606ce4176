"""ONNX Runtime and TensorRT settings: canonical values, labels, builder options and target rules."""

from __future__ import annotations

import pytest

from optimizer import runtimes
from optimizer.errors import UserError
from optimizer.onnx_settings import (
    OrtGenaiSettings,
    OrtOnnxSettings,
    TensorRTSettings,
    genai_rule,
    onnx_rule,
    tensorrt_rule,
)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Pretend exactly the given modules and distributions are installed."""

    def install(modules: set[str] = frozenset(), distributions: set[str] = frozenset()) -> None:
        monkeypatch.setattr(runtimes, "has_module", lambda name: name in modules)
        monkeypatch.setattr(runtimes, "has_distribution", lambda name: name in distributions)

    return install


CPU_ORT = {"onnxruntime", "onnxruntime_genai", "onnx", "onnxscript"}


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"precision": "int3"}, "settings.precision"),
        ({"provider": "rocm"}, "settings.provider"),
        ({"precision": "int4", "block_size": 48}, "settings.block_size"),
        ({"precision": "int4", "block_size": "32"}, "settings.block_size"),
        ({"precision": "int4", "accuracy_level": True}, "settings.accuracy_level"),
        ({"precision": "int4", "int8_lm_head": 1}, "settings.int8_lm_head"),
        ({"precision": "int4", "algorithm": "gptq"}, "settings.algorithm"),
    ],
)
def test_genai_settings_reject_unknown_values(values: dict, field: str) -> None:
    with pytest.raises(UserError) as info:
        OrtGenaiSettings(**values)
    assert info.value.field == field


def test_weight_options_only_apply_to_quantized_builds() -> None:
    with pytest.raises(UserError) as info:
        OrtGenaiSettings(precision="fp32", algorithm="k_quant")
    assert info.value.field == "settings.precision"
    with pytest.raises(UserError) as info:
        OrtGenaiSettings(precision="int8", int8_lm_head=True)
    assert info.value.field == "settings.int8_lm_head"
    assert OrtGenaiSettings(precision="int8", algorithm="k_quant", accuracy_level=1).algorithm == "k_quant"


def test_builder_options_are_explicit_for_quantized_builds() -> None:
    assert OrtGenaiSettings(precision="fp32").builder_extra_options() == {}
    options = OrtGenaiSettings(
        precision="int4", algorithm="k_quant", block_size=64, accuracy_level=4, int8_lm_head=True
    ).builder_extra_options()
    assert options == {
        "algo_config": "k_quant",
        "block_size": "64",
        "accuracy_level": "4",
        "matmul_mixed_precision": "last_matmul:int8",
    }


def test_labels_name_what_differs() -> None:
    assert OrtGenaiSettings().label() == "fp32"
    assert (
        OrtGenaiSettings(precision="int4", accuracy_level=4, int8_lm_head=True).label()
        == "int4 default g32 acc4 lm_head=int8"
    )
    assert OrtGenaiSettings(provider="cuda", precision="fp16").label() == "fp16 cuda"
    assert (
        OrtOnnxSettings(quantization="int8-static", provider="tensorrt").label()
        == "fp32 int8-static tensorrt"
    )
    assert TensorRTSettings("int8").label() == "int8"


def test_genai_rules_on_a_cpu(make_target, installed) -> None:
    cpu = make_target()
    installed(CPU_ORT)
    assert genai_rule(OrtGenaiSettings(precision="int4", accuracy_level=4), cpu) is None
    assert "GPU target" in str(genai_rule(OrtGenaiSettings(provider="cuda"), cpu))
    assert "GPUs only" in str(genai_rule(OrtGenaiSettings(provider="cpu", precision="fp16"), cpu))
    installed(set())
    reason = genai_rule(OrtGenaiSettings(), cpu)
    assert reason is not None and "onnxruntime-genai" in reason and "wattsmith[ort]" in reason


def test_genai_rules_on_a_gpu(make_target, installed) -> None:
    gpu = make_target(kind="cuda")
    installed(CPU_ORT)
    assert "wrong device" in str(genai_rule(OrtGenaiSettings(provider="cpu"), gpu))
    assert "onnxruntime-genai-cuda" in str(
        genai_rule(OrtGenaiSettings(provider="cuda", precision="fp16"), gpu)
    )
    installed(CPU_ORT, {"onnxruntime-genai-cuda"})
    assert genai_rule(OrtGenaiSettings(provider="cuda", precision="fp16"), gpu) is None


def test_onnx_rules(make_target, installed) -> None:
    cpu, gpu = make_target(), make_target(kind="cuda")
    installed(CPU_ORT)
    assert onnx_rule(OrtOnnxSettings(quantization="int8-static"), cpu) is None
    assert "fp16" in str(onnx_rule(OrtOnnxSettings(precision="fp16"), cpu))
    assert "GPU target" in str(onnx_rule(OrtOnnxSettings(provider="tensorrt"), cpu))
    assert "onnxruntime-gpu" in str(onnx_rule(OrtOnnxSettings(provider="cuda", precision="fp16"), gpu))
    trt_dynamic = OrtOnnxSettings(provider="tensorrt", quantization="int8-dynamic")
    assert "QDQ" in str(onnx_rule(trt_dynamic, gpu))
    installed(CPU_ORT, {"onnxruntime-gpu"})
    assert onnx_rule(OrtOnnxSettings(provider="cuda", precision="fp16"), gpu) is None
    assert "TensorRT libraries" in str(onnx_rule(OrtOnnxSettings(provider="tensorrt"), gpu))
    installed(CPU_ORT | {"tensorrt"}, {"onnxruntime-gpu"})
    assert onnx_rule(OrtOnnxSettings(provider="tensorrt", quantization="int8-static"), gpu) is None
    installed({"onnxruntime", "onnx"})
    assert "onnxscript" in str(onnx_rule(OrtOnnxSettings(), cpu))


def test_tensorrt_rules(make_target, installed) -> None:
    installed(CPU_ORT | {"tensorrt"})
    assert "NVIDIA GPU" in str(tensorrt_rule(TensorRTSettings(), make_target()))
    gpu = make_target(kind="cuda")
    assert tensorrt_rule(TensorRTSettings("int8"), gpu) is None
    installed(CPU_ORT)
    assert "wattsmith[tensorrt]" in str(tensorrt_rule(TensorRTSettings(), gpu))
