"""torch-cb request checks found by s45: `submit` took a request of 0 (or fewer) new tokens,
which transformers finished with no token and one timestamp, an empty prompt, and prompt tokens
outside the vocabulary, whose embedding IndexError killed the manager's loop thread: the
innocent request beside it failed, and so did every later submit. generate() and the llama.cpp
and genai engines refuse them. A tiny random Llama built in memory (CPU, fp32)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.measure.serving import Completion

VOCAB = 1000
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 2048,
}


@pytest.fixture(scope="module")
def llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa")).eval()


@pytest.fixture
def engine(llama: Any) -> Iterator[ContinuousBatchingEngine]:
    settings = ContinuousBatchingSettings(precision="fp32", page_size=16)
    engine = ContinuousBatchingEngine(llama, settings, "cpu", max_requests=2, max_sequence_tokens=64)
    yield engine
    engine.close()


def collect(engine: ContinuousBatchingEngine, count: int) -> dict[str, Completion]:
    done: dict[str, Completion] = {}
    deadline = time.monotonic() + 30
    while len(done) < count and time.monotonic() < deadline:
        done.update((c.request_id, c) for c in engine.collect(0.5))
    return done


@pytest.mark.parametrize("count", [0, -2])
def test_submit_refuses_fewer_than_one_new_token(engine: ContinuousBatchingEngine, count: int) -> None:
    with pytest.raises(ValueError, match=f"max_new_tokens must be >= 1, got {count}"):
        engine.submit([5, 6, 7], count)
    assert not engine._pending


def test_submit_refuses_an_empty_prompt(engine: ContinuousBatchingEngine) -> None:
    with pytest.raises(ValueError, match="at least one prompt token"):
        engine.submit([], 3)


@pytest.mark.parametrize("bad", [-3, VOCAB, VOCAB + 5])
def test_a_token_outside_the_vocabulary_is_refused_alone(engine: ContinuousBatchingEngine, bad: int) -> None:
    good = engine.submit([5, 6, 7], 3)
    with pytest.raises(ValueError, match=f"token id {bad} is outside the model's vocabulary of {VOCAB}"):
        engine.submit([5, bad, 7], 3)
    done = collect(engine, 1)
    assert done[good].error is None and len(done[good].token_ids) == 3
    later = engine.submit([8, 9], 2)  # the loop thread lives on
    assert collect(engine, 1)[later].error is None


def test_generate_refuses_a_token_outside_the_vocabulary(engine: ContinuousBatchingEngine) -> None:
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside"):
        engine.generate(torch.tensor([[5, 6, 7], [5, VOCAB, 7]]), 2)
    assert engine.generate(torch.tensor([[5, 6, 7]]), 2).new_tokens == 2
