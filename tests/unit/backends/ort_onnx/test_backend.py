"""ONNX export with a flat KV cache, ORT quantization variants and the IO-bound greedy loop, on a
tiny random Llama with the CPU execution provider (the loop is the same on CUDA and TensorRT)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'wattsmith[ort]')")
pytest.importorskip(
    "onnxscript", reason="the dynamo exporter needs onnxscript (pip install 'wattsmith[ort]')"
)

from optimizer.backends.artifacts import PROVENANCE  # noqa: E402
from optimizer.backends.onnx import export as onnx_export  # noqa: E402
from optimizer.backends.onnx.export import MODEL_FILE, exported_decoder  # noqa: E402
from optimizer.backends.onnx.kv_decoding import StepEngine  # noqa: E402
from optimizer.backends.onnx.quantize import dynamic_int8, fp16, static_int8_qdq, weight_matmuls  # noqa: E402
from optimizer.backends.ort_onnx.backend import (  # noqa: E402
    OrtSteps,
    ProviderUnavailable,
    make_session,
    tensorrt_options,
)
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings  # noqa: E402
from optimizer.config import ModelConfig  # noqa: E402
from optimizer.model import ModelSpec, resolve_model  # noqa: E402
from optimizer.space import Candidate  # noqa: E402
from optimizer.target import TargetSpec  # noqa: E402
from unit.factories import target_spec  # noqa: E402

pytestmark = pytest.mark.slow  # every test here needs the export (~10 s on 2 cores)

VOCAB = 49152


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path, workdir: Path) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), workdir)


@pytest.fixture(scope="module")
def fp32_dir(tiny_spec: ModelSpec, workdir: Path) -> Path:
    return exported_decoder(tiny_spec, workdir)


@pytest.fixture(scope="module")
def cpu_target() -> TargetSpec:
    return target_spec(cores=2, bf16=False, energy_source="estimate")


@pytest.fixture(scope="module")
def reference(tiny_spec: ModelSpec):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_spec.path)).eval()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


def steps_for(model_dir: Path) -> OrtSteps:
    return OrtSteps(make_session(model_dir / MODEL_FILE, ["CPUExecutionProvider"], 1), "cpu", 0, None)


@pytest.fixture
def fp32_engine(fp32_dir: Path) -> Iterator[StepEngine]:
    engine = StepEngine(steps_for(fp32_dir))
    yield engine
    engine.close()


def test_export_logits_match_torch(fp32_engine: StepEngine, reference, prompts: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = reference(input_ids=prompts).logits
    logits = fp32_engine.score(prompts)
    assert logits.shape == (2, 6, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_greedy_loop_matches_hf_generate(fp32_engine: StepEngine, reference, prompts: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = reference.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
        )[:, 6:]
    gen = fp32_engine.generate(prompts, 6)
    assert gen.token_ids is not None and torch.equal(gen.token_ids, expected)
    assert 0 < gen.ttft_seconds <= gen.total_seconds


def test_the_cache_carries_over_between_steps(fp32_dir: Path, prompts: torch.Tensor) -> None:
    steps = steps_for(fp32_dir)
    ids = prompts.numpy()
    steps.start(2)
    first = steps.step(ids)
    second = steps.step(first[:, None])
    # the same tokens scored from scratch: the step's next token is the full sequence's argmax
    full = steps.logits(np.concatenate([ids, first[:, None]], axis=1))
    assert np.array_equal(first, full[:, -2].argmax(-1))
    assert np.array_equal(second, full[:, -1].argmax(-1))
    steps.close()


def test_the_export_is_cached(tiny_spec: ModelSpec, workdir: Path, fp32_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "export_decoder", lambda *a, **k: pytest.fail("exported again"))
    assert exported_decoder(tiny_spec, workdir) == fp32_dir
    provenance = json.loads((fp32_dir / PROVENANCE).read_text())
    assert provenance["model_sha256"] == tiny_spec.weight_sha256 and provenance["torch"]
    assert not (fp32_dir / "raw").exists()  # only the constant-folded model is kept


def test_constant_folding_exposes_the_weights(fp32_dir: Path) -> None:
    # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    assert len(weight_matmuls(fp32_dir / MODEL_FILE)) == 2 * 7 + 1


def _op_counts(model_dir: Path) -> Counter[str]:
    import onnx

    return Counter(
        n.op_type for n in onnx.load(str(model_dir / MODEL_FILE), load_external_data=False).graph.node
    )


def test_dynamic_int8_quantizes_the_weight_matmuls_only(fp32_dir: Path, prompts: torch.Tensor) -> None:
    quantized = dynamic_int8(fp32_dir)
    ops = _op_counts(quantized)
    assert ops["DynamicQuantizeLinear"] + ops["DynamicQuantizeMatMul"] > 0
    assert ops["MatMul"] == _op_counts(fp32_dir)["MatMul"] - len(weight_matmuls(fp32_dir / MODEL_FILE))
    engine = StepEngine(steps_for(quantized))
    gen = engine.generate(prompts, 3)
    engine.close()
    assert gen.token_ids is not None and gen.token_ids.shape == (2, 3)


def test_static_int8_is_a_calibrated_qdq_model(
    fp32_dir: Path, tiny_spec: ModelSpec, prompts: torch.Tensor
) -> None:
    quantized = static_int8_qdq(fp32_dir, tiny_spec)
    ops = _op_counts(quantized)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    calibration = json.loads((quantized / PROVENANCE).read_text())["calibration"]
    assert calibration["split"] == "workload" and calibration["text"] == "wiki"  # never the quality split
    engine = StepEngine(steps_for(quantized))
    gen = engine.generate(prompts, 3)
    engine.close()
    assert gen.token_ids is not None and gen.token_ids.shape == (2, 3)


def test_fp16_conversion_keeps_float32_inputs_and_outputs(fp32_dir: Path) -> None:
    import onnx

    converted = fp16(fp32_dir)
    graph = onnx.load(str(converted / MODEL_FILE), load_external_data=False).graph
    float_types = {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} - {
        onnx.TensorProto.INT64
    }
    assert float_types == {onnx.TensorProto.FLOAT}
    weights = Counter(i.data_type for i in graph.initializer if len(i.dims) == 2)
    assert weights[onnx.TensorProto.FLOAT16] > weights[onnx.TensorProto.FLOAT]


def test_backend_builds_and_load_checks(tiny_spec: ModelSpec, workdir: Path, cpu_target: TargetSpec) -> None:
    from optimizer.backends.registry import build_engine

    engine = build_engine(tiny_spec, Candidate(OrtOnnxSettings(), 2, 1), cpu_target, workdir)
    assert isinstance(engine, StepEngine)
    assert isinstance(engine.steps, OrtSteps) and engine.steps.max_batch is None
    assert engine.steps.session.get_session_options().intra_op_num_threads == 1
    engine.close()


def test_a_silent_fallback_to_the_cpu_is_an_error(fp32_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    with pytest.raises(ProviderUnavailable, match="could not use CUDAExecutionProvider"):
        make_session(
            fp32_dir / MODEL_FILE, [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], 1
        )


def test_tensorrt_provider_options(fp32_dir: Path, workdir: Path) -> None:
    settings = OrtOnnxSettings(provider="tensorrt", precision="fp16", quantization="int8-static")
    options = tensorrt_options(settings, 1, fp32_dir, 8, workdir)
    assert options["device_id"] == 1
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is True
    cache = Path(options["trt_engine_cache_path"])
    assert cache.is_dir() and workdir in cache.parents and options["trt_timing_cache_path"] == str(cache)
    assert options["trt_profile_max_shapes"].startswith("input_ids:8x1024,")
    assert "past.1.value:1x2x0x16" in options["trt_profile_min_shapes"]  # 2 kv heads x head dim 16


def test_a_granite_exports_its_scaled_logits(tmp_path: Path, workdir: Path) -> None:
    """Granite divides its logits by `logits_scaling`: the export computes what its forward does."""
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
        logits_scaling=8.0,
    )
    torch.manual_seed(0)
    model = GraniteForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "granite", safe_serialization=True)
    spec = resolve_model(ModelConfig(source=str(tmp_path / "granite")), workdir)
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    engine = StepEngine(steps_for(exported_decoder(spec, workdir)))
    logits = engine.score(ids)
    engine.close()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
