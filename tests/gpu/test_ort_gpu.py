"""ONNX Runtime (CUDA and TensorRT execution providers), onnxruntime-genai on CUDA and native
TensorRT engines on a real NVIDIA GPU. Each test skips with the install step it lacks.

Run on a GPU machine after the steps in docs/backends.md:  pytest -m gpu tests/gpu/test_ort_gpu.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.backends import installed

pytestmark = pytest.mark.gpu

VOCAB = 49152


def _require(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cuda_target():  # type: ignore[no-untyped-def]
    from optimizer.config import TargetConfig
    from optimizer.target import detect_target

    return detect_target(TargetConfig(kind="cuda"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    cache = tmp_path_factory.mktemp("gpu-ort-cache")
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), cache), cache


@pytest.fixture(scope="module")
def reference_logits(tiny) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model, _ = tiny
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(str(model.path)).eval()
    with torch.inference_mode():
        return ids, reference(input_ids=ids).logits


def _check(settings, tiny, cuda_target, reference_logits, min_agreement: float) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.registry import build_engine
    from optimizer.space import Candidate

    model, cache = tiny
    ids, expected = reference_logits
    engine = build_engine(model, Candidate(settings, batch_size=4, threads=0), cuda_target, cache)
    try:
        gen = engine.generate(ids, 8)
        assert gen.token_ids is not None and gen.token_ids.shape == (4, 8)
        assert 0 < gen.ttft_seconds <= gen.total_seconds
        logits = engine.score(ids)
    finally:
        engine.close()
    assert logits.shape == expected.shape and logits.dtype == torch.float32
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement >= min_agreement


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_genai_cuda(precision: str, tiny, cuda_target, reference_logits) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings

    _require(installed.missing_genai("cuda"))
    _check(OrtGenaiSettings(provider="cuda", precision=precision), tiny, cuda_target, reference_logits, 0.5)


@pytest.mark.parametrize(
    ("provider", "precision", "quantization"),
    [
        ("cuda", "fp32", "none"),
        ("cuda", "fp16", "none"),
        ("tensorrt", "fp16", "none"),
        ("tensorrt", "fp32", "int8-static"),
    ],
)
def test_ort_onnx_gpu_providers(
    provider: str, precision: str, quantization: str, tiny, cuda_target, reference_logits
) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.ort_onnx.settings import OrtOnnxSettings

    _require(installed.missing_onnx_runtime(provider))
    settings = OrtOnnxSettings(provider=provider, precision=precision, quantization=quantization)
    _check(
        settings,
        tiny,
        cuda_target,
        reference_logits,
        0.99 if precision == "fp32" and quantization == "none" else 0.5,
    )


def test_tensorrt_ep_reuses_its_engine_cache(tiny, cuda_target) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
    from optimizer.backends.registry import build_engine
    from optimizer.space import Candidate

    _require(installed.missing_onnx_runtime("tensorrt"))
    model, cache = tiny
    candidate = Candidate(OrtOnnxSettings(provider="tensorrt", precision="fp16"), 4, 0)
    build_engine(model, candidate, cuda_target, cache).close()
    engines = sorted((cache / "tensorrt-ep").rglob("*.engine"))
    assert engines
    build_engine(model, candidate, cuda_target, cache).close()
    assert sorted((cache / "tensorrt-ep").rglob("*.engine")) == engines  # built once


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_native_tensorrt_engine(precision: str, tiny, cuda_target, reference_logits) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.tensorrt.settings import TensorRTSettings

    _require(installed.missing_tensorrt())
    _check(
        TensorRTSettings(precision), tiny, cuda_target, reference_logits, 0.99 if precision == "fp32" else 0.5
    )


def test_native_tensorrt_engine_is_cached(tiny, cuda_target) -> None:  # type: ignore[no-untyped-def]
    from optimizer.backends.registry import build_engine
    from optimizer.backends.tensorrt import backend as trt_backend
    from optimizer.backends.tensorrt.settings import TensorRTSettings
    from optimizer.space import Candidate

    _require(installed.missing_tensorrt())
    model, cache = tiny
    candidate = Candidate(TensorRTSettings("fp16"), 4, 0)
    build_engine(model, candidate, cuda_target, cache).close()
    real = trt_backend.build_engine_file
    trt_backend.build_engine_file = lambda *a, **k: pytest.fail("the engine was built again")  # type: ignore[assignment]
    try:
        build_engine(model, candidate, cuda_target, cache).close()
    finally:
        trt_backend.build_engine_file = real  # type: ignore[assignment]
    assert list((cache / "tensorrt").glob("timing-*.cache"))
