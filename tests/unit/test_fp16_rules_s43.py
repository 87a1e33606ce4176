"""Half precision on targets without fp16 (target.fp16=false: no fast fp16 kernels there).

ort-onnx's TensorRT EP (trt_fp16_enable) and CUDA EP (an fp16 conversion of the model) run fp16
kernels: like torch's and TensorRT's rules, its rule excludes fp16 on such a target, while a
recipe's load (`refuse_excluded_here`, fp16=True: "does it run at all") still accepts it.
An int8 TensorRT engine sets the FP16 flag only where the target has fp16 (builder_flags); else its
non-Q/DQ layers, the embedding's Gather among them, run in fp32: the memory check counts that.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from optimizer.backends.ort_onnx import spec as ort_spec
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.registry import spec_for
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.backends.tensorrt.spec import SPEC as TENSORRT
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.search.prefilter import USABLE_FRACTION, estimate_memory_bytes, memory_fit_reason
from optimizer.space import Candidate

from .factories import target_spec

NO_FP16_GPU = target_spec(kind="cuda", fp16=False)


@pytest.fixture
def runtime_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_spec, "missing_onnx_runtime", lambda provider: None)


@pytest.mark.usefixtures("runtime_installed")
@pytest.mark.parametrize(
    "settings",
    [
        OrtOnnxSettings(provider="cuda", precision="fp16"),
        OrtOnnxSettings(provider="tensorrt", precision="fp16"),
        OrtOnnxSettings(provider="tensorrt", precision="fp16", quantization="int8-static"),
    ],
)
def test_ort_onnx_fp16_is_excluded_on_a_target_without_fp16(settings: OrtOnnxSettings) -> None:
    """It stayed valid (None) there, while torch and tensorrt exclude fp16 on the same target."""
    assert (
        spec_for(settings).exclusion_reason(settings, NO_FP16_GPU)
        == "fp16 has no fast kernels on this target"
    )
    # the flag says a kernel is fast, not that it runs: a recipe's load asks with fp16=True
    assert spec_for(settings).exclusion_reason(settings, replace(NO_FP16_GPU, fp16=True)) is None


@pytest.mark.usefixtures("runtime_installed")
def test_ort_onnx_rules_the_fp16_flag_leaves_alone() -> None:
    for provider in ("cuda", "tensorrt"):
        assert ort_spec.onnx_rule(OrtOnnxSettings(provider=provider), NO_FP16_GPU) is None
    # the CPU provider's own words stay (a CPU target has fp16=false too)
    cpu_fp16 = ort_spec.onnx_rule(OrtOnnxSettings(precision="fp16"), target_spec())
    assert cpu_fp16 == "fp16 has no fast kernels on the CPU execution provider"


# Llama-3-8B: untied, lm_head's 525 M parameters counted in the 8.03 B
VOCAB, HIDDEN = 128256, 4096
MATRIX = VOCAB * HIDDEN
LLAMA3_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248, tied_embeddings=False)
OTHERS = LLAMA3_8B.num_parameters - 2 * MATRIX
WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)


def _need(precision: str) -> int:
    return estimate_memory_bytes(Candidate(TensorRTSettings(precision), 4, 1), LLAMA3_8B, WORKLOAD)


def test_tensorrt_int8_counts_an_embedding_that_may_run_in_fp32() -> None:
    """The int8 engine keeps the fp32 engine's embedding width (no FP16 flag without target.fp16);
    only the Q/DQ weights (lm_head among them) shrink to 1 byte. It was counted at 2 bytes: 2 x
    525 M = 1.05 GB under on such a target."""
    assert _need("fp32") - _need("int8") == pytest.approx((OTHERS + MATRIX) * (4 - 1), abs=2)


def test_a_no_fp16_gpu_refuses_an_int8_engine_its_embedding_overflows() -> None:
    int8_need = _need("fp32") - (OTHERS + MATRIX) * 3
    # a budget that held the embedding at 2 bytes, not at the 4 the engine keeps here
    target = replace(NO_FP16_GPU, memory_bytes=int((int8_need - MATRIX) / USABLE_FRACTION))
    candidate = Candidate(TensorRTSettings("int8"), 4, 1)
    reason = memory_fit_reason(candidate, LLAMA3_8B, target, WORKLOAD)
    assert reason is not None and "target.memory_gib" in reason


def test_tensorrt_fp32_and_fp16_footprints_are_unchanged() -> None:
    for precision, width in (("fp32", 4.0), ("fp16", 2.0)):
        fp = TENSORRT.footprint(TensorRTSettings(precision), 32)
        assert (fp.weight_bytes, fp.activation_bytes, fp.kv_bytes) == (width, 4.0, 4.0)
        assert (fp.embedding_bytes, fp.output_bytes, fp.tied_holds, fp.kv_copies) == (None, None, "both", 2)
    int8 = TENSORRT.footprint(TensorRTSettings("int8"), 32)
    assert (int8.weight_bytes, int8.embedding_bytes, int8.output_bytes) == (1.0, 4.0, None)
