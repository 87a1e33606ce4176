"""TorchBackend on a tiny random Llama: build each CPU setting, generate and score."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.backends.registry import build_engine, spec_for
from optimizer.backends.torch.backend import QUANTIZED_KV_SCORE_CHUNK, TorchBackend, TorchEngine
from optimizer.backends.torch.settings import TorchSettings
from optimizer.config import ModelConfig
from optimizer.model import ModelSpec, resolve_model
from optimizer.space import Candidate

VOCAB = 49152


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    # longer than one quantized-KV scoring chunk, and not a multiple of it
    return torch.randint(
        0, VOCAB, (2, QUANTIZED_KV_SCORE_CHUNK + 5), generator=torch.Generator().manual_seed(1)
    )


def build(spec: ModelSpec, tmp_path: Path, make_target, **settings) -> TorchEngine:
    # one thread: fast on a small shared CPU, and it exercises the threads setting
    candidate = Candidate(TorchSettings(**settings), batch_size=2, threads=1)
    return TorchBackend().build(spec, candidate, make_target(cores=2), tmp_path)


SETTINGS = [
    pytest.param({}, id="fp32"),
    pytest.param({"precision": "bf16"}, id="bf16"),
    pytest.param({"quantization": "int8-weight"}, id="int8-weight"),
    pytest.param({"kv_cache": "quanto-4"}, id="quanto-4"),
    pytest.param({"kv_cache": "hqq-4"}, id="hqq-4"),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_generate_and_score(
    settings, tiny_spec: ModelSpec, prompts, eval_ids, tmp_path: Path, make_target
) -> None:
    engine = build(tiny_spec, tmp_path, make_target, **settings)
    try:
        assert torch.get_num_threads() == 1
        gen = engine.generate(prompts, 5)
        assert gen.batch_size == 2
        assert gen.new_tokens == 5  # EOS is suppressed: every request does the same work
        assert gen.output_tokens == 10
        assert 0 < gen.ttft_seconds <= gen.total_seconds
        assert gen.tpot_seconds >= 0
        assert gen.token_ids is not None and gen.token_ids.shape == (2, 5)
        logits = engine.score(eval_ids)
        assert logits.shape == (2, eval_ids.shape[1], VOCAB)
        assert logits.dtype == torch.float32
        assert logits.device.type == "cpu"
        assert torch.isfinite(logits).all()
    finally:
        engine.close()
    assert engine.model is None


def test_bf16_weights_are_bf16(tiny_spec: ModelSpec, tmp_path: Path, make_target) -> None:
    engine = build(tiny_spec, tmp_path, make_target, precision="bf16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    engine.close()


def test_greedy_generation_is_deterministic(
    tiny_spec: ModelSpec, prompts, tmp_path: Path, make_target
) -> None:
    engine = build(tiny_spec, tmp_path, make_target)
    try:
        a, b = engine.generate(prompts, 4), engine.generate(prompts, 4)
    finally:
        engine.close()
    assert a.token_ids is not None and b.token_ids is not None
    assert a.token_ids.shape == (2, 4)
    assert torch.equal(a.token_ids, b.token_ids)


def test_fp32_score_is_the_plain_forward(tiny_spec: ModelSpec, eval_ids, tmp_path: Path, make_target) -> None:
    from transformers import AutoModelForCausalLM

    engine = build(tiny_spec, tmp_path, make_target)
    try:
        logits = engine.score(eval_ids)
    finally:
        engine.close()
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_spec.path)).eval()
    with torch.inference_mode():
        expected = reference(input_ids=eval_ids).logits.float()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_quantized_kv_scoring_stays_close_to_the_full_forward(
    tiny_spec: ModelSpec, eval_ids, tmp_path: Path, make_target
) -> None:
    full = build(tiny_spec, tmp_path, make_target)
    quantized = build(tiny_spec, tmp_path, make_target, kv_cache="quanto-4")
    try:
        a, b = full.score(eval_ids), quantized.score(eval_ids)
    finally:
        full.close()
        quantized.close()
    # chunked scoring through the cache sees the same prefix: next-token choices agree mostly
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree > 0.9


def test_registry_dispatches_by_settings_type(
    tiny_spec: ModelSpec, prompts, tmp_path: Path, make_target
) -> None:
    assert spec_for(TorchSettings()).settings_type is TorchSettings
    engine = build_engine(tiny_spec, Candidate(TorchSettings(), 1, 1), make_target(cores=2), tmp_path)
    try:
        assert isinstance(engine, TorchEngine)
        assert engine.generate(prompts[:1], 2).new_tokens == 2
    finally:
        engine.close()


def test_quantized_kv_scoring_uses_no_deprecated_argument(
    tiny_spec: ModelSpec, eval_ids, tmp_path: Path, make_target
) -> None:
    import warnings

    engine = build(tiny_spec, tmp_path, make_target, kv_cache="quanto-4")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            engine.score(eval_ids)
    finally:
        engine.close()


def test_static_fp8_build_calibrates_on_the_workload_text_and_keeps_the_lm_head(
    tiny_model_dir: Path, tmp_path: Path, make_target
) -> None:
    """fp8-static is a GPU candidate, but torch._scaled_mm also runs on a CPU: the build path
    (calibration windows from the model's tokenizer, the swap, scoring) is checked here."""
    from optimizer.backends.torch.fp8_static import Float8StaticLinear

    model = resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path)
    target = make_target(cores=1)
    settings = dict(precision="bf16", kv_cache="static")
    plain = build_engine(model, Candidate(TorchSettings(**settings), 1, 1), target, tmp_path)
    fp8 = build_engine(
        model, Candidate(TorchSettings(quantization="fp8-static", **settings), 1, 1), target, tmp_path
    )
    swapped = [m for m in fp8.model.modules() if isinstance(m, Float8StaticLinear)]
    assert len(swapped) == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 layers
    assert not isinstance(fp8.model.lm_head, Float8StaticLinear)
    assert all(float(m.input_scale) > 0 for m in swapped)
    ids = torch.randint(0, 49152, (2, 12))
    a, b = plain.score(ids), fp8.score(ids)
    cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cosine > 0.95


def test_quantized_kv_scoring_holds_the_context_quantized(
    tiny_spec: ModelSpec, make_target, tmp_path: Path
) -> None:
    """After scoring a 120-token window chunk by chunk, at most one chunk of it is left in full
    precision (transformers' default residual would keep the last 104), and every token after the first
    chunk scores differently from the plain forward: it attends to quantized keys and values."""
    from transformers import AutoModelForCausalLM

    from optimizer.backends.torch.backend import scoring_cache
    from optimizer.backends.torch.compiling import cache_argument

    model = AutoModelForCausalLM.from_pretrained(str(tiny_spec.path)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that every token depends on its whole context
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3, generator=generator)
    ids = torch.randint(0, VOCAB, (1, 120), generator=torch.Generator().manual_seed(2))
    cache = scoring_cache("quanto-4", model.config)
    chunks = []
    with torch.inference_mode():
        for start in range(0, ids.shape[1], QUANTIZED_KV_SCORE_CHUNK):
            piece = ids[:, start : start + QUANTIZED_KV_SCORE_CHUNK]
            chunks.append(model(input_ids=piece, use_cache=True, **{cache_argument(model): cache}).logits)
        plain = model(input_ids=ids).logits
    residual = cache.layers[0].keys
    assert (residual.shape[-2] if residual.dim() == 4 else 0) <= QUANTIZED_KV_SCORE_CHUNK
    scored = torch.cat(chunks, dim=1)
    first = slice(0, QUANTIZED_KV_SCORE_CHUNK)
    torch.testing.assert_close(scored[:, first], plain[:, first], rtol=1e-4, atol=1e-4)  # own keys only
    late = (scored[:, 64:] - plain[:, 64:]).abs().amax(-1)
    assert bool((late > 1e-3).all())


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"kv_cache": "static"}, id="static-cache"),
        pytest.param({"attention": "sdpa_gqa"}, id="sdpa_gqa"),
        pytest.param({"kv_cache": "static", "loop": "slots"}, id="slots"),
    ],
)
def test_generate_only_paths_decode_what_the_plain_forward_decodes(
    tiny_spec: ModelSpec, prompts, tmp_path: Path, make_target, settings
) -> None:
    """On this CPU; the captured loop (CUDA graphs) is checked the same way on a GPU by the evaluator."""
    from optimizer.backends.parity import check_greedy_parity

    assert TorchSettings(**settings).generate_only_paths
    engine = build(tiny_spec, tmp_path, make_target, **settings)
    try:
        check_greedy_parity(engine, prompts, 8, "fp32")
    finally:
        engine.close()


def test_every_static_cache_is_checked_for_greedy_parity() -> None:
    """An offloaded static cache (CUDA only) pads and masks inside generate like a static one."""
    from optimizer.space import TorchSettings

    assert TorchSettings(kv_cache="offloaded_static").generate_only_paths
    assert TorchSettings(kv_cache="static").generate_only_paths
    assert not TorchSettings(kv_cache="offloaded").generate_only_paths


@pytest.mark.parametrize("quantization", ["int8-weight", "int8-dynamic"])
def test_torchao_quantization_keeps_the_output_projection_tied_and_16_bit(
    tiny_spec: ModelSpec, quantization: str
) -> None:
    """As fp8-static does (and as the footprint assumes): a quantized lm_head would be a copy beside
    the 16-bit embedding it was tied to, and the output projection stays 16-bit for quality."""
    from optimizer.backends.torch.backend import load_hf_model, quantize_weights

    model = load_hf_model(tiny_spec, "bf16", "sdpa", "cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    quantize_weights(model, TorchSettings(precision="bf16", quantization=quantization), tiny_spec)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: one tensor
    assert type(model.lm_head.weight) is torch.nn.Parameter
    assert model.lm_head.weight.dtype == torch.bfloat16
    quantized = type(model.model.layers[0].self_attn.q_proj.weight)
    assert quantized is not torch.nn.Parameter  # the other Linears are quantized
