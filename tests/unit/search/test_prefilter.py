"""The analytic memory prefilter."""

from __future__ import annotations

import pytest

from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.search.prefilter import RUNTIME_OVERHEAD_BYTES, estimate_memory_bytes, memory_fit_reason
from optimizer.target import GIB
from unit.factories import SMOLLM2_SHAPE

SHAPE = SMOLLM2_SHAPE
WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)


def test_estimate_adds_weights_kv_activations_logits_overhead(make_candidate) -> None:
    cand = make_candidate(batch_size=8)
    tokens = 8 * (64 + 32)
    expected = (
        SHAPE.num_parameters * 4
        + tokens * SHAPE.kv_bytes_per_token(4)
        + 8 * 64 * 576 * 4 * 8
        + 8 * 49152 * 4
        + RUNTIME_OVERHEAD_BYTES
    )
    assert estimate_memory_bytes(cand, SHAPE, WORKLOAD) == int(expected)


def test_lower_precision_and_quantization_need_less(make_candidate) -> None:
    fp32 = estimate_memory_bytes(make_candidate(), SHAPE, WORKLOAD)
    bf16 = estimate_memory_bytes(make_candidate(precision="bf16"), SHAPE, WORKLOAD)
    int8 = estimate_memory_bytes(
        make_candidate(precision="bf16", quantization="int8-weight"), SHAPE, WORKLOAD
    )
    assert fp32 > bf16 > int8
    # int8 weight-only: a byte saved per Linear weight; the embedding (tied lm_head) stays bf16
    embedding = SHAPE.vocab_size * SHAPE.hidden_size
    assert bf16 - int8 == pytest.approx((SHAPE.num_parameters - embedding) * 1.0, abs=1)


def test_quantized_and_offloaded_kv_caches_need_less(make_candidate) -> None:
    big = {"batch_size": 256, "precision": "bf16"}
    # past transformers' 128-token residual window, which stays bf16; 4 bits + a bf16 scale and
    # zero point per 64 elements (0.5625 bytes) for the rest
    long = WorkloadConfig(prompt_tokens=1024, max_new_tokens=32)
    plain = estimate_memory_bytes(make_candidate(**big), SHAPE, long)
    quanto4 = estimate_memory_bytes(make_candidate(**big, kv_cache="quanto-4"), SHAPE, long)
    offloaded = estimate_memory_bytes(make_candidate(**big, kv_cache="offloaded"), SHAPE, long)
    assert plain - quanto4 == pytest.approx(256 * (1056 - 128) * SHAPE.kv_bytes_per_token(2 - 0.5625), abs=2)
    assert offloaded < plain


def test_memory_fit_reason(make_candidate, make_target) -> None:
    cand = make_candidate(batch_size=1)
    assert memory_fit_reason(cand, SHAPE, make_target(memory_bytes=64 * GIB), WORKLOAD) is None
    reason = memory_fit_reason(cand, SHAPE, make_target(memory_bytes=GIB // 2), WORKLOAD)
    assert reason is not None and "target.memory_gib" in reason


def test_ort_footprints_follow_the_build(make_candidate) -> None:
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
    from optimizer.backends.tensorrt.settings import TensorRTSettings
    from optimizer.space import Candidate

    def need(settings, batch_size: int = 1) -> int:
        return estimate_memory_bytes(Candidate(settings, batch_size, 1), SHAPE, WORKLOAD)

    fp32 = need(OrtGenaiSettings())
    int8 = need(OrtGenaiSettings(precision="int8", accuracy_level=4))
    int4 = need(OrtGenaiSettings(precision="int4", accuracy_level=4))
    assert fp32 > int8 > int4
    matrix = SHAPE.vocab_size * SHAPE.hidden_size
    # int4 weights: half a byte plus one fp32 scale per 32-weight block; the fp32 build of the tied
    # SmolLM2 also holds the Transpose of lm_head ONNX Runtime folds for the embedding's Gather
    assert fp32 - int4 == pytest.approx(SHAPE.num_parameters * (4 - 0.5 - 4 / 32) + matrix * 4, abs=2)
    # genai returns logits for every prompt token at prefill; our export only the last one
    # and its constant folding unties SmolLM2's tied lm_head into a second matrix
    torch_fp32 = estimate_memory_bytes(make_candidate(batch_size=8), SHAPE, WORKLOAD)
    # and its decode step holds the past beside the present: a second batch KV
    kv_fp32 = 8 * (64 + 32) * SHAPE.kv_bytes_per_token(4.0)
    assert need(OrtOnnxSettings(), 8) == torch_fp32 + matrix * 4 + kv_fp32
    assert need(OrtGenaiSettings(), 8) - torch_fp32 == 8 * (64 - 1) * SHAPE.vocab_size * 4 + matrix * 4
    assert need(OrtOnnxSettings(quantization="int8-dynamic")) < need(OrtOnnxSettings())
    # fp16 on CUDA halves weights and activations, but past/present stay float32 at the boundary
    fp16 = estimate_memory_bytes(
        Candidate(OrtOnnxSettings(provider="cuda", precision="fp16"), 8, 1), SHAPE, WORKLOAD
    )
    kv = 8 * (64 + 32) * SHAPE.kv_bytes_per_token(4.0)
    assert fp16 == int(
        (SHAPE.num_parameters + matrix) * 2
        + 2 * kv
        + 8 * 64 * 576 * 2 * 8
        + 8 * 49152 * 4
        + RUNTIME_OVERHEAD_BYTES
    )
    assert need(TensorRTSettings("int8")) < need(TensorRTSettings("fp16")) < need(TensorRTSettings("fp32"))


def test_genai_cuda_builds_keep_a_half_precision_cache() -> None:
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.backends.ort_genai.spec import SPEC

    assert SPEC.footprint(OrtGenaiSettings(precision="int4"), 30).kv_bytes == 4.0  # fp32 activations on CPU
    assert SPEC.footprint(OrtGenaiSettings(provider="cuda", precision="int4"), 30).kv_bytes == 2.0


def test_a_stream_sizes_the_cache_for_its_longest_request(make_candidate, make_target) -> None:
    """Continuous batching reserves every slot for the longest request the stream can make."""
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
    from optimizer.config import LengthConfig
    from optimizer.space import Candidate

    llama8b = ModelShape(32, 4096, 32, 8, 128, 128256, 8_030_000_000)
    stream = WorkloadConfig(
        kind="serving",
        prompt_lengths=LengthConfig(kind="lognormal", mean=256, min=16, max=2048, cv=0.8),
        output_lengths=LengthConfig(kind="lognormal", mean=128, min=8, max=512, cv=0.6),
    )
    assert stream.longest_request_tokens() == 2048 + 512
    chat = WorkloadConfig(kind="serving", shared_prefix_tokens=256, turns=4)  # 512 + 256 per turn
    assert chat.longest_request_tokens() == 256 + 512 + 3 * 512 + 4 * 256  # the system prompt, then a message
    served = Candidate(ContinuousBatchingSettings(precision="bf16"), batch_size=256, threads=0)
    kv = 256 * 2560 * llama8b.kv_bytes_per_token(2)  # 80 GiB of pages
    assert estimate_memory_bytes(served, llama8b, stream) > kv + llama8b.num_parameters * 2
    h100 = make_target(kind="cuda", memory_bytes=80 * GIB)
    assert memory_fit_reason(served, llama8b, h100, stream) is not None
    fixed = Candidate(
        ContinuousBatchingSettings(precision="bf16", kv_cache_tokens=65536), batch_size=256, threads=0
    )
    assert memory_fit_reason(fixed, llama8b, h100, stream) is None  # 8 GiB of pages, shared by all slots


def test_llamacpp_kv_is_counted_in_whole_context_granules() -> None:
    """llama.cpp's engine gives every sequence a whole number of 256-cell granules: 96 tokens
    per request hold 256 cells each (the check counted 96: 135 MiB of 360 MiB at batch 64)."""
    from optimizer.backends.llamacpp.settings import LlamaCppSettings
    from optimizer.space import Candidate

    def need(max_new_tokens: int) -> int:
        workload = WorkloadConfig(prompt_tokens=64, max_new_tokens=max_new_tokens)
        return estimate_memory_bytes(Candidate(LlamaCppSettings(), 64, 1), SHAPE, workload)

    kv = 64 * 256 * SHAPE.kv_bytes_per_token(2.0)  # f16 cache, 256 cells per sequence
    rest = SHAPE.num_parameters * 2 + 64 * 64 * 576 * 4 * 8 + 64 * 49152 * 4 + RUNTIME_OVERHEAD_BYTES
    assert need(32) == int(rest + kv)
    assert need(192) == need(32)  # 256 tokens: the same granule
    assert need(193) == int(rest + 2 * kv)  # 257 tokens: two granules
