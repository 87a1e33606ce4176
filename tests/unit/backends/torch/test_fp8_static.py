"""fp8 with static activation scales on the CPU: a tiny random Llama, nothing downloaded.

torch._scaled_mm runs on the CPU (torch >= 2.13), so the numbers here are the real fp8 path;
only the CUDA layout checks and cuBLASLt are left to tests/gpu/test_fp8_static_gpu.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from optimizer.backends.torch.fp8_static import (
    FP8_MAX,
    Float8StaticLinear,
    calibrate_input_amax,
    quantize_fp8_static,
)


def _tiny_llama(**overrides: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,  # as SmolLM2: lm_head is the embedding
    }
    settings.update(overrides)
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(LlamaConfig(**settings))
    return model.to(torch.bfloat16).eval()


def _ids(rows: int = 4, tokens: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (rows, tokens), generator=torch.Generator().manual_seed(seed))


def _eligible_linears(model: nn.Module) -> list[str]:
    head = model.get_output_embeddings()  # type: ignore[operator]
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and m.in_features % 16 == 0 and m.out_features % 16 == 0
    ]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_swaps_every_eligible_linear_and_keeps_lm_head() -> None:
    model = _tiny_llama()
    eligible = _eligible_linears(model)
    head = model.lm_head
    report = quantize_fp8_static(model, _ids(), batch_size=3)
    swapped = [n for n, m in model.named_modules() if isinstance(m, Float8StaticLinear)]
    assert report.layers_quantized == len(eligible) == len(swapped) == 14
    assert sorted(swapped) == sorted(eligible)
    assert model.lm_head is head and type(head) is nn.Linear and head.weight.dtype == torch.bfloat16
    assert head.weight is model.get_input_embeddings().weight  # still tied
    assert [name for name, _ in report.layers_skipped] == ["lm_head"]
    assert report.calibration_tokens == 4 * 16
    assert _no_hooks(model)
    assert "14 Linear layers in fp8" in str(report)


def test_untied_output_projection_is_kept_too() -> None:
    model = _tiny_llama(tie_word_embeddings=False)
    report = quantize_fp8_static(model, _ids())
    assert type(model.lm_head) is nn.Linear
    assert report.layers_quantized == 14
    assert [name for name, _ in report.layers_skipped] == ["lm_head"]


def _calibrated_linear(amax: float = 3.0) -> tuple[nn.Linear, Float8StaticLinear]:
    torch.manual_seed(2)
    linear = nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    return linear, Float8StaticLinear.from_linear(linear, input_amax=amax)


def test_output_is_close_to_the_bf16_linear() -> None:
    linear, fp8 = _calibrated_linear(amax=3.0)
    x = (torch.rand(2, 5, 64) * 6 - 3).to(torch.bfloat16)  # within the calibrated range
    y = fp8(x)
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    assert _relative_error(y, linear(x)) < 0.08
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight.shape == (48, 64)
    assert not list(fp8.parameters())  # buffers only
    assert {"weight", "weight_scale", "input_scale", "input_scale_inv", "bias"} <= set(fp8.state_dict())


def test_input_scale_is_the_calibrated_one_and_static() -> None:
    _, fp8 = _calibrated_linear(amax=3.0)
    expected = torch.tensor(3.0 / FP8_MAX, dtype=torch.float32)
    assert fp8.input_scale.dtype == torch.float32 and fp8.input_scale.shape == ()
    torch.testing.assert_close(fp8.input_scale, expected)
    before = fp8.input_scale.clone()
    for scale in (0.1, 1.0, 100.0):
        fp8(torch.randn(3, 64, dtype=torch.bfloat16) * scale)
    assert torch.equal(fp8.input_scale, before)
    torch.testing.assert_close(fp8.input_scale * fp8.input_scale_inv, torch.tensor(1.0))


def test_margin_widens_the_scale() -> None:
    linear, _ = _calibrated_linear()
    wide = Float8StaticLinear.from_linear(linear, input_amax=3.0, margin=2.0)
    torch.testing.assert_close(wide.input_scale, torch.tensor(6.0 / FP8_MAX))


def test_inputs_beyond_the_calibrated_range_saturate() -> None:
    linear, fp8 = _calibrated_linear(amax=1.0)
    x = torch.full((2, 64), 1000.0, dtype=torch.bfloat16)  # 1000x the calibrated amax
    y = fp8(x)
    assert torch.isfinite(y).all()
    clipped = torch.full((2, 64), 1.0, dtype=torch.bfloat16)  # what a saturated input means
    assert _relative_error(y, linear(clipped)) < 0.08


def test_model_logits_stay_close() -> None:
    model = _tiny_llama()
    ids = _ids(rows=4, tokens=24, seed=3)
    with torch.inference_mode():
        before = model(input_ids=ids, use_cache=False).logits.float()
    quantize_fp8_static(model, _ids(rows=8, tokens=24, seed=4))  # other text than the check's
    with torch.inference_mode():
        after = model(input_ids=ids, use_cache=False).logits.float()
    assert torch.isfinite(after).all()
    cosine = torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0)
    assert cosine > 0.98
    agreement = (after.argmax(-1) == before.argmax(-1)).float().mean()
    assert agreement > 0.9


def test_ineligible_shapes_are_skipped_and_reported() -> None:
    # head_dim 12: k/v_proj out 24; intermediate 72: gate/up out 72, down_proj in 72.
    model = _tiny_llama(intermediate_size=72, head_dim=12)
    eligible = _eligible_linears(model)
    report = quantize_fp8_static(model, _ids())
    reasons = dict(report.layers_skipped)
    assert report.layers_quantized == len(eligible) == 4  # q_proj, o_proj per layer
    for name in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj"):
        assert "multiples of 16" in reasons[name]
        assert type(model.get_submodule(name)) is nn.Linear
    assert type(model.get_submodule("model.layers.0.self_attn.q_proj")) is Float8StaticLinear
    assert len(report.layers_skipped) == 5 * 2 + 1  # k, v, gate, up, down per layer; lm_head


def test_zero_amax_layer_stays_bf16() -> None:
    model = _tiny_llama()
    # A zeroed v_proj feeds zeros to o_proj: its input amax is 0 and no scale can come of it.
    nn.init.zeros_(model.model.layers[0].self_attn.v_proj.weight)
    report = quantize_fp8_static(model, _ids())
    assert type(model.model.layers[0].self_attn.o_proj) is nn.Linear
    assert "amax 0.0" in dict(report.layers_skipped)["model.layers.0.self_attn.o_proj"]
    assert report.layers_quantized == 13


def test_calibration_records_every_eligible_linear_and_removes_hooks() -> None:
    model = _tiny_llama()
    amax = calibrate_input_amax(model, [_ids(2, 8, seed=5), _ids(2, 8, seed=6)])
    assert sorted(amax) == sorted(_eligible_linears(model))
    assert all(value > 0 for value in amax.values())
    assert _no_hooks(model)
    single = calibrate_input_amax(model, [_ids(2, 8, seed=5)])
    assert all(amax[name] >= single[name] for name in amax)  # a running max over batches


def test_hooks_are_removed_on_error() -> None:
    model = _tiny_llama()
    bad = torch.full((1, 4), 10_000)  # out of the vocabulary: the embedding raises
    with pytest.raises(IndexError):
        calibrate_input_amax(model, [bad])
    assert _no_hooks(model)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"calibration_ids": torch.zeros(4, dtype=torch.long)}, "calibration_ids"),
        ({"calibration_ids": torch.zeros(2, 4)}, "calibration_ids"),
        ({"batch_size": 0}, "batch_size"),
        ({"margin": 0.0}, "margin"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    model = _tiny_llama(num_hidden_layers=1)
    arguments: dict[str, Any] = {"calibration_ids": _ids(), **kwargs}
    with pytest.raises(ValueError, match=field):
        quantize_fp8_static(model, **arguments)


@pytest.mark.slow
def test_compiles_without_graph_breaks_and_matches_eager() -> None:
    _, fp8 = _calibrated_linear(amax=3.0)
    x = (torch.rand(3, 64) * 6 - 3).to(torch.bfloat16)
    compiled = torch.compile(fp8, dynamic=False, fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), fp8(x), rtol=0.0, atol=0.0)
