"""torch-cb and learned positions (s45): a GPT-2 style model looks each position up in a table
of `n_positions` rows, and a request longer than that raised IndexError in the manager's loop
thread, which failed the innocent request beside it and stopped the thread for good (every
later submit failed). Such a request is now refused alone at submit; a rotary model (Llama) has
no table and keeps taking long prompts. Tiny random models built in memory (CPU, fp32)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.measure.serving import Completion

POSITIONS = 32
SETTINGS = ContinuousBatchingSettings(precision="fp32", page_size=16)


@pytest.fixture(scope="module")
def gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=POSITIONS)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def engine(gpt2: Any) -> Iterator[ContinuousBatchingEngine]:
    engine = ContinuousBatchingEngine(gpt2, SETTINGS, "cpu", max_requests=2, max_sequence_tokens=64)
    yield engine
    engine.close()


def collect(engine: ContinuousBatchingEngine, count: int) -> dict[str, Completion]:
    done: dict[str, Completion] = {}
    deadline = time.monotonic() + 30
    while len(done) < count and time.monotonic() < deadline:
        done.update((c.request_id, c) for c in engine.collect(0.5))
    return done


def test_a_request_past_the_positions_is_refused_alone(engine: ContinuousBatchingEngine) -> None:
    good = engine.submit([5, 6, 7], 3)
    with pytest.raises(ValueError, match=f"needs 42 positions; the model has {POSITIONS}"):
        engine.submit(list(range(40)), 3)
    done = collect(engine, 1)
    assert done[good].error is None and len(done[good].token_ids) == 3
    later = engine.submit([8, 9], 2)  # the loop thread lives on
    assert collect(engine, 1)[later].error is None


def test_generate_refuses_a_request_past_the_positions(engine: ContinuousBatchingEngine) -> None:
    with pytest.raises(ValueError, match=f"needs 33 positions; the model has {POSITIONS}"):
        engine.generate(torch.arange(POSITIONS).unsqueeze(0), 2)
    assert engine.generate(torch.tensor([[5, 6, 7]]), 2).new_tokens == 2


@pytest.mark.parametrize(("prompt", "new"), [(31, 2), (32, 1)])
def test_a_request_that_fills_the_positions_runs(
    engine: ContinuousBatchingEngine, prompt: int, new: int
) -> None:
    # the last new token is never fed back, so it needs no position
    assert engine.generate(torch.arange(prompt).unsqueeze(0), new).new_tokens == new


def test_a_rotary_model_takes_prompts_past_its_max_positions() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=1000,
        max_position_embeddings=POSITIONS,
    )
    llama = LlamaForCausalLM(config).eval()
    engine = ContinuousBatchingEngine(llama, SETTINGS, "cpu", max_requests=1, max_sequence_tokens=64)
    try:
        assert engine.generate(torch.arange(40).unsqueeze(0), 2).new_tokens == 2
    finally:
        engine.close()
