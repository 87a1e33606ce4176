"""onnxruntime-genai settings: canonical values, labels, builder options and target rules."""

from __future__ import annotations

import pytest

from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_genai.spec import genai_rule
from optimizer.errors import UserError


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


def test_genai_rules_on_a_cpu(make_target, installed, cpu_ort) -> None:
    cpu = make_target()
    installed(cpu_ort)
    assert genai_rule(OrtGenaiSettings(precision="int4", accuracy_level=4), cpu) is None
    assert "GPU target" in str(genai_rule(OrtGenaiSettings(provider="cuda"), cpu))
    assert "GPUs only" in str(genai_rule(OrtGenaiSettings(provider="cpu", precision="fp16"), cpu))
    installed(set())
    reason = genai_rule(OrtGenaiSettings(), cpu)
    assert reason is not None and "onnxruntime-genai" in reason and "wattsmith[ort]" in reason


def test_genai_rules_on_a_gpu(make_target, installed, cpu_ort) -> None:
    gpu = make_target(kind="cuda")
    installed(cpu_ort)
    assert "wrong device" in str(genai_rule(OrtGenaiSettings(provider="cpu"), gpu))
    assert "onnxruntime-genai-cuda" in str(
        genai_rule(OrtGenaiSettings(provider="cuda", precision="fp16"), gpu)
    )
    installed(cpu_ort, {"onnxruntime-genai-cuda"})
    assert genai_rule(OrtGenaiSettings(provider="cuda", precision="fp16"), gpu) is None


@pytest.mark.parametrize(("module", "package"), [("onnx_ir", "onnx-ir"), ("onnx", "onnx")])
def test_the_model_builder_needs_its_own_imports(
    make_target, installed, cpu_ort, module: str, package: str
) -> None:
    """onnxruntime-genai's pip metadata needs only numpy and onnxruntime; its builder imports more."""
    installed(cpu_ort - {module})
    reason = genai_rule(OrtGenaiSettings(precision="int8"), make_target())
    assert reason is not None and package in reason and "wattsmith[ort]" in reason
    installed(cpu_ort - {module}, {"onnxruntime-genai-cuda"})
    reason = genai_rule(OrtGenaiSettings(provider="cuda", precision="fp16"), make_target(kind="cuda"))
    assert reason is not None and package in reason and "wattsmith[gpu]" in reason


def test_streams_go_to_the_engine_api_up_to_its_static_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer.backends.ort_genai import spec

    settings = OrtGenaiSettings()
    assert spec.SPEC.workload_reason(settings, spec.GENERATOR_MAX_BATCH, serving=False) is None  # offline
    reason = str(spec.SPEC.workload_reason(settings, 64, serving=False))  # the Generator's own limit
    assert "at most 32 sequences" in reason and "batch 64" in reason
    assert "static batches of at most 4" in str(spec.SPEC.workload_reason(settings, 64, serving=True))
    assert spec.SPEC.workload_reason(settings, spec.ENGINE_STATIC_BATCH, serving=True) is None
    reason = str(spec.SPEC.workload_reason(settings, 8, serving=True))
    assert "static batches of at most 4" in reason and "paged KV cache" in reason
    # an onnxruntime-genai without the Engine API serves a stream one request at a time
    monkeypatch.setattr(
        spec, "missing_genai_engine", lambda: "onnxruntime-genai 0.17.1 has no Engine API (0.18+)"
    )
    reason = str(spec.SPEC.workload_reason(settings, 2, serving=True))
    assert "no Engine API" in reason and "batch 1 only" in reason
    assert spec.SPEC.workload_reason(settings, 1, serving=True) is None
