"""Models whose logits are more than lm_head(hidden): Granite divides them by `logits_scaling`,
Cohere multiplies them by `logit_scale`, Gemma2 soft-caps them (`final_logit_softcapping`). The
ONNX export's wrapper must compute what the model's own forward computes; the slot loop, whose
prefill takes lm_head(hidden), refuses them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer.backends.onnx.export import FlatCacheDecoder
from optimizer.backends.torch.slot_decoder import check_supported

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "initializer_range": 0.3,  # logits large enough for a soft cap to bend them
}


def tiny(family: str) -> Any:
    import transformers

    configs = {
        "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 8.0}),
        "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 0.5}),
    }
    config_name, model_name, extra = configs[family]
    config = getattr(transformers, config_name)(**TINY, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("family", ["granite", "cohere", "gemma2"])
def test_the_export_wrapper_returns_the_models_own_logits(family: str) -> None:
    model = tiny(family)
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([1, 4])
    past = [torch.zeros(2, 2, 0, 16) for _ in range(4)]  # 2 layers x (key, value), nothing cached
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, positions].float()
        logits, next_token, *presents = FlatCacheDecoder(model)(ids, positions, past)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(next_token, expected[:, -1].argmax(-1))
    assert len(presents) == 4 and presents[0].shape == (2, 2, 5, 16)


@pytest.mark.parametrize(
    ("field", "value"),
    [("logits_scaling", 8.0), ("logit_scale", 0.25), ("final_logit_softcapping", 30.0)],
)
def test_the_slot_loop_refuses_logits_that_are_not_lm_head(field: str, value: float) -> None:
    config = SimpleNamespace(model_type="m", layer_types=None, **{field: value})
    with pytest.raises(ValueError, match=f"sets {field}"):
        check_supported(SimpleNamespace(config=config))


def test_the_slot_loop_takes_an_unscaled_granite() -> None:
    check_supported(SimpleNamespace(config=SimpleNamespace(model_type="granite", logits_scaling=1.0)))
