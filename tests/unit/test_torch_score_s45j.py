"""TorchEngine.score (the quality probe's forward) builds no KV cache it would throw away, and
its logits are the model's, upcast to float32 exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from optimizer.backends.torch.backend import TorchEngine
from optimizer.backends.torch.settings import TorchSettings


def _tiny_llama(dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_score_builds_no_cache_and_gives_the_same_float32_logits(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny_llama(dtype)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(input_ids=ids).logits.float()  # what score returned before
    forward = model.forward
    caches: list[object] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        caches.append(out.past_key_values)
        return out

    monkeypatch.setattr(model, "forward", spy)
    with torch.inference_mode():
        scored = TorchEngine(model, TorchSettings(), "cpu").score(ids)
    assert caches == [None]  # one forward, and no KV cache built for it
    assert scored.dtype == torch.float32 and scored.device.type == "cpu"
    assert torch.equal(scored, reference)
