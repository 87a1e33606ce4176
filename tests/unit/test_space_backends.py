"""The backend axis: enumeration per backend, exclusion of what the target lacks, round trips."""

from __future__ import annotations

import pytest

from optimizer.backends import installed
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.config import (
    OrtGenaiAxes,
    OrtOnnxAxes,
    SpaceConfig,
    TensorRTAxes,
    TorchAxes,
    compose_run_config,
)
from optimizer.errors import UserError
from optimizer.space import Candidate, enumerate_candidates


@pytest.fixture
def ort_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installed, "has_module", lambda name: name != "tensorrt")
    monkeypatch.setattr(installed, "has_distribution", lambda name: False)


def space(backends: list[str], **axes) -> SpaceConfig:
    return SpaceConfig(
        backends=backends,
        batch_sizes=axes.pop("batch_sizes", [1]),
        threads=axes.pop("threads", [0]),
        torch=TorchAxes(precisions=["fp32"], quantizations=["none"]),
        **axes,
    )


def test_genai_axes_collapse_for_float_and_int8_builds(make_target, ort_installed) -> None:
    axes = OrtGenaiAxes(
        precisions=["fp32", "int8", "int4"],
        algorithms=["default", "k_quant"],
        block_sizes=[32],
        accuracy_levels=[1, 4],
        int8_lm_head=[False, True],
    )
    valid, excluded = enumerate_candidates(space(["ort-genai"], ort_genai=axes), make_target())
    settings = [c.settings for c in valid]
    assert not excluded
    assert all(isinstance(s, OrtGenaiSettings) for s in settings)
    by_precision = {p: [s for s in settings if s.precision == p] for p in ("fp32", "int8", "int4")}
    assert by_precision["fp32"] == [OrtGenaiSettings()]  # weight options do not apply
    assert len(by_precision["int8"]) == 2 * 2  # algorithms x accuracy levels, no int8 lm_head
    assert len(by_precision["int4"]) == 2 * 2 * 2
    assert len({c.key() for c in valid}) == len(valid)


def test_candidates_of_all_backends_side_by_side(make_target, ort_installed) -> None:
    cfg = space(
        ["torch", "ort-genai", "ort-onnx", "tensorrt"],
        batch_sizes=[1, 8],
        ort_genai=OrtGenaiAxes(precisions=["fp32", "int8"]),
        ort_onnx=OrtOnnxAxes(quantizations=["none", "int8-dynamic"]),
        tensorrt=TensorRTAxes(precisions=["fp16"]),
    )
    valid, excluded = enumerate_candidates(cfg, make_target(cores=2))
    assert [c.backend for c in valid] == ["torch"] * 2 + ["ort-genai"] * 4 + ["ort-onnx"] * 4
    assert all(c.threads == 2 for c in valid)  # threads 0 = all cores, for ORT as for torch
    assert {(c.backend, r) for c, r in excluded} == {
        ("tensorrt", "TensorRT engines need an NVIDIA GPU target")
    }


def test_a_missing_runtime_excludes_its_backend_with_the_install_command(
    make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(installed, "has_module", lambda name: False)
    valid, excluded = enumerate_candidates(space(["torch", "ort-genai", "ort-onnx"]), make_target())
    assert [c.backend for c in valid] == ["torch"]
    reasons = {c.backend: r for c, r in excluded}
    assert "onnxruntime-genai" in reasons["ort-genai"] and "wattsmith[ort]" in reasons["ort-genai"]
    assert "onnxruntime" in reasons["ort-onnx"]


def test_gpu_targets_take_gpu_providers_only(make_target, ort_installed) -> None:
    cfg = space(
        ["ort-genai", "ort-onnx"],
        ort_genai=OrtGenaiAxes(providers=["cpu", "cuda"], precisions=["fp16"]),
        ort_onnx=OrtOnnxAxes(providers=["cpu", "cuda"], precisions=["fp32"], quantizations=["none"]),
    )
    valid, excluded = enumerate_candidates(cfg, make_target(kind="cuda"))
    assert valid == []  # no onnxruntime-gpu / genai-cuda installed here
    reasons = {c.settings.label(): r for c, r in excluded}
    assert reasons["fp16"] == "a CPU execution provider on a GPU target measures the wrong device"
    assert "onnxruntime-genai-cuda" in reasons["fp16 cuda"]
    assert "onnxruntime-gpu" in reasons["fp32 cuda"]


@pytest.mark.parametrize(
    "settings",
    [
        OrtGenaiSettings(
            precision="int4", algorithm="k_quant", block_size=64, accuracy_level=4, int8_lm_head=True
        ),
        OrtOnnxSettings(provider="tensorrt", precision="fp16", quantization="int8-static"),
        TensorRTSettings("int8"),
    ],
)
def test_ort_candidates_round_trip_and_key_their_numerics(settings) -> None:
    cand = Candidate(settings, batch_size=8, threads=2)
    data = cand.to_dict()
    assert data["backend"] == settings.BACKEND
    again = Candidate.from_dict(data)
    assert again == cand and again.key() == cand.key()
    assert Candidate(settings, 1, 1).numerics_key() == cand.numerics_key()
    assert Candidate(settings, 1, 1).key() != cand.key()


def test_numerics_differ_between_backends_with_equal_fields() -> None:
    genai = Candidate(OrtGenaiSettings(), 1, 1)
    onnx = Candidate(OrtOnnxSettings(), 1, 1)
    assert genai.numerics_key() != onnx.numerics_key()
    assert genai.label() == "ort-genai fp32 b1 t1"


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "ort-genai", "precision": "int4", "block_size": 7},
        {"backend": "ort-onnx", "quantization": "int4"},
        {"backend": "tensorrt", "precision": "fp8"},
        {"backend": "ort-genai", "kv_cache": "static"},
    ],
)
def test_from_dict_rejects_bad_ort_settings(bad: dict) -> None:
    with pytest.raises(UserError):
        Candidate.from_dict({"batch_size": 1, "threads": 1} | bad)


def test_extra_candidates_may_name_an_ort_backend(make_target, ort_installed) -> None:
    cfg = space(["torch"])
    cfg.extra = [{"backend": "ort-genai", "precision": "int8", "accuracy_level": 4, "batch_size": 4}]
    valid, _ = enumerate_candidates(cfg, make_target(cores=2))
    assert valid[0] == Candidate(OrtGenaiSettings(precision="int8", accuracy_level=4), 4, 2)


def test_presets_compose(ort_installed) -> None:
    cpu = compose_run_config(["space=cpu-ort"])
    assert cpu.space.backends == ["torch", "ort-genai", "ort-onnx"]
    assert "int4" in cpu.space.ort_genai.precisions
    gpu = compose_run_config(["space=gpu-ort"])
    assert gpu.space.tensorrt.precisions == ["fp16", "int8"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("space.backends=[torch,onnx]", "space.backends"),
        ("space.ort_genai.block_sizes=[48]", "space.ort_genai.block_sizes"),
        ("space.ort_onnx.providers=[rocm]", "space.ort_onnx.providers"),
        ("space.tensorrt.precisions=[fp8]", "space.tensorrt.precisions"),
    ],
)
def test_bad_axes_name_their_field(override: str, field: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == field
