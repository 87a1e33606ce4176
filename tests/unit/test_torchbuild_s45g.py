"""The torch backend's build and decode paths (session 45, G): what a build holds at its peak."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from optimizer.backends.torch import fp8_static


def _tiny_bf16_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_static_fp8_frees_each_16_bit_weight_as_it_replaces_it(
    no_cyclic_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory fit counts a quantizing build's peak as every weight at 16 bits (load_peak_bytes),
    as torchao's quantize_ holds it. Keeping each replaced Linear until the last was quantized held
    the 16-bit weights beside their fp8 copies: 1.5x that peak (a 32B bf16 model, 64 GB, fit an
    80 GB GPU by the estimate and needed ~96 GB while quantizing)."""
    model = _tiny_bf16_llama()
    replaced: list[weakref.ref[torch.Tensor]] = []
    alive_at_each_swap: list[int] = []
    from_linear = fp8_static.Float8StaticLinear.from_linear

    def spy(linear: nn.Linear, *args: Any, **kwargs: Any) -> fp8_static.Float8StaticLinear:
        alive_at_each_swap.append(sum(ref() is not None for ref in replaced))
        replaced.append(weakref.ref(linear.weight))
        return from_linear(linear, *args, **kwargs)

    monkeypatch.setattr(fp8_static.Float8StaticLinear, "from_linear", spy)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    report = fp8_static.quantize_fp8_static(model, ids)
    assert report.layers_quantized == len(alive_at_each_swap) == 14
    assert alive_at_each_swap == [0] * 14  # no earlier 16-bit weight outlives its replacement


def _bf16_llama_of_width(hidden: int, intermediate: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 192,
        vocab_size=256,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def test_int4_weight_refuses_a_model_whose_linears_torchao_would_leave_16_bit() -> None:
    """torchao quantizes int4 in groups of 128 inputs and returns any other Linear's weight as it
    was, logging at INFO (silenced here): SmolLM2-135M's hidden size of 576 left q/k/v/o/gate/up
    in bf16 (75% of its Linear weights) under an int4-weight label that the memory fit and the
    roofline count at 4 bits. Every width here is 576 or 704: no Linear would be quantized."""
    from optimizer.backends.torch.backend import quantize_weights
    from optimizer.backends.torch.settings import TorchSettings

    model = _bf16_llama_of_width(576, 704)
    settings = TorchSettings(precision="bf16", quantization="int4-weight")
    with pytest.raises(ValueError, match=r"int4-weight.*in_features=576.*7 of 7") as error:
        quantize_weights(model, settings, None)  # type: ignore[arg-type]  # int4 reads no model files
    assert "int8-weight" in str(error.value)  # the fix it names
    assert type(model.model.layers[0].mlp.up_proj.weight) is torch.nn.Parameter  # refused before any


def test_int4_weight_checks_only_what_it_quantizes() -> None:
    """The output projection stays 16-bit anyway (excluded_weights): a vocabulary or hidden size
    that is no multiple of 128 there refuses nothing."""
    from optimizer.backends.torch.backend import int4_ungrouped_linears

    model = _bf16_llama_of_width(576, 704)
    assert "lm_head" not in int4_ungrouped_linears(model)
    assert len(int4_ungrouped_linears(model)) == 7
    assert int4_ungrouped_linears(_bf16_llama_of_width(768, 1536)) == []


def test_int4_weight_is_excluded_before_the_build_where_the_hidden_size_is_ungrouped() -> None:
    """SmolLM2's hidden size 576 is no multiple of 128: excluded by the rules, not after a load."""
    from dataclasses import replace

    from optimizer.backends.torch.settings import TorchSettings
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
    from optimizer.space import Candidate, exclusion_reason
    from unit.factories import SMOLLM2_SHAPE, target_spec

    target = target_spec()
    for settings in (
        TorchSettings(quantization="int4-weight"),
        ContinuousBatchingSettings(quantization="int4-weight"),
    ):
        candidate = Candidate(settings, batch_size=1, threads=1)
        reason = exclusion_reason(candidate, target, shape=SMOLLM2_SHAPE)
        assert reason is not None and "hidden size 576" in reason
        assert "hidden size" not in str(
            exclusion_reason(candidate, target, shape=replace(SMOLLM2_SHAPE, hidden_size=512))
        )
    assert (
        exclusion_reason(
            Candidate(TorchSettings(quantization="int8-weight"), 1, 1), target, shape=SMOLLM2_SHAPE
        )
        is None
    )
