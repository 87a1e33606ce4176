"""loop=hf (HF `generate`) decodes plain greedy: the raw argmax of every step, exactly
max_new_tokens of them, whatever the checkpoint's generation_config.json asks for."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.torch.backend import TorchEngine
from optimizer.backends.torch.settings import TorchSettings

NEW_TOKENS = 6
KV_CACHES = [pytest.param("dynamic", id="dynamic"), pytest.param("static", id="static")]


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(1000, 20000, (2, 12), generator=torch.Generator().manual_seed(3))


def plain_greedy(hf_model: Any, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The raw argmax of repeated plain forwards (no cache, no processing): what the parity
    reference (backends/parity.py) and the other loops decode."""
    ids = prompts
    with torch.inference_mode():
        for _ in range(new_tokens):
            step = hf_model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
    return ids[:, prompts.shape[1] :]


@pytest.fixture
def engine(hf_model: Any) -> Iterator[Callable[[str], TorchEngine]]:
    """A loop=hf engine maker; the shared model's generation config is restored after the test."""
    kept = copy.deepcopy(hf_model.generation_config)
    yield lambda kv_cache: TorchEngine(hf_model, TorchSettings(kv_cache=kv_cache), "cpu")
    hf_model.generation_config = kept


@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_a_checkpoints_sampling_and_processing_settings_do_not_reach_greedy(
    engine: Any, hf_model: Any, prompts: torch.Tensor, kv_cache: str
) -> None:
    """Qwen2.5-Instruct ships repetition_penalty 1.1 (and others no_repeat_ngram_size, suppress or
    bad words): transformers fills every field our config leaves unset from the model's."""
    from transformers import GenerationConfig

    eng = engine(kv_cache)
    expected = plain_greedy(hf_model, prompts, NEW_TOKENS)
    first = int(expected[0, 0])
    hf_model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.1,
        no_repeat_ngram_size=1,
        suppress_tokens=[first],  # what plain greedy emits first: any processing shows
        bad_words_ids=[[int(expected[1, 0])]],
    )
    generation = eng.generate(prompts, NEW_TOKENS)
    assert generation.token_ids is not None
    assert torch.equal(generation.token_ids, expected)


@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_eos_is_the_raw_argmax_and_does_not_stop_generation(
    engine: Any, hf_model: Any, prompts: torch.Tensor, kv_cache: str
) -> None:
    """Like the other loops and the parity reference: an EOS argmax is emitted (not masked to the
    runner-up) and every row still gets exactly max_new_tokens (fixed work per request)."""
    eng = engine(kv_cache)
    expected = plain_greedy(hf_model, prompts, NEW_TOKENS)
    eos = int(expected[0, 0])  # the model's EOS is what row 0 emits first
    hf_model.generation_config.eos_token_id = eos
    config_eos = hf_model.config.eos_token_id
    hf_model.config.eos_token_id = eos
    try:
        generation = eng.generate(prompts, NEW_TOKENS)
        padded = eng.generate_padded([prompts[0].tolist(), prompts[1, 3:].tolist()], NEW_TOKENS)
    finally:
        hf_model.config.eos_token_id = config_eos
    assert generation.token_ids is not None and padded.token_ids is not None
    assert generation.new_tokens == padded.new_tokens == NEW_TOKENS
    assert torch.equal(generation.token_ids, expected)
    assert padded.token_ids.shape == (2, NEW_TOKENS)
    assert torch.equal(padded.token_ids[0], expected[0])  # the EOS row went on past its EOS


def test_generate_refuses_a_config_that_would_process_logits(
    engine: Any, monkeypatch: pytest.MonkeyPatch, prompts: torch.Tensor
) -> None:
    from transformers import GenerationConfig

    eng = engine("dynamic")
    monkeypatch.setattr(
        eng,
        "_generation_config",
        lambda new: GenerationConfig(max_new_tokens=new, do_sample=False, repetition_penalty=1.2),
    )
    with pytest.raises(RuntimeError, match="RepetitionPenalty"):
        eng.generate(prompts, 2)
