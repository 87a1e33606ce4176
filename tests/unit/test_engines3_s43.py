"""Engines that fail one request must keep serving (s43): a llama.cpp context that could not be
made for one request's size, and prompt ids outside the vocabulary (slot loop and llama.cpp).
The packaged SmolLM2 GGUF for llama.cpp, a tiny random Llama on the CPU for the slot loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.torch.slot_server import SlotEngine
from optimizer.errors import UserError
from optimizer.model import _packaged_gguf
from unit.backends.torch.test_slot_loop import VOCAB, greedy, prompts, tiny_llama

ROOM_TOKENS = 1024  # the most tokens per sequence the faked memory below has room for


# -- the slot loop -----------------------------------------------------------------------------


@pytest.fixture
def slot_engine() -> Iterator[tuple[Any, SlotEngine]]:
    model = tiny_llama()
    engine = SlotEngine(model, 2, "cpu")
    yield model, engine
    engine.close()


def test_slot_loop_refuses_an_id_outside_the_vocabulary_alone(slot_engine: tuple[Any, SlotEngine]) -> None:
    """The bad request was admitted beside a running one: the prefill's IndexError ("index out
    of range in self") failed both (on CUDA: a device-side assert, the process's context lost)."""
    model, engine = slot_engine
    prompt = prompts(6, seed=1)[0]
    running = engine.submit(prompt, 60)
    for bad, told in (([1, VOCAB, 2], VOCAB), ([-1, 3], -1)):
        with pytest.raises(ValueError, match=f"token id {told} is outside the model's vocabulary of {VOCAB}"):
            engine.submit(bad, 4)
    done = engine.collect(30.0)
    assert [(c.request_id, c.error, list(c.token_ids)) for c in done] == [
        (running, None, greedy(model, prompt, 60))
    ]


def test_slot_loop_generate_with_a_bad_row_submits_none(slot_engine: tuple[Any, SlotEngine]) -> None:
    """A bad second row used to be submitted and fail with its first (IndexError); refused at
    submit alone, the first row would have run on with nobody to collect it."""
    model, engine = slot_engine
    rows = prompts(5, 5, seed=2)
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside the model's vocabulary of {VOCAB}"):
        engine.generate(torch.tensor([rows[0], [*rows[1][:4], VOCAB]]), 40)
    assert engine.first_token_times() == {}
    assert engine.collect(0.1) == []
    generation = engine.generate(torch.tensor(rows), 4)
    assert generation.token_ids is not None
    assert generation.token_ids.tolist() == [greedy(model, r, 4) for r in rows]


# -- llama.cpp ---------------------------------------------------------------------------------


@pytest.fixture
def gguf() -> Path:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")
    try:
        return _packaged_gguf("smollm2")[0]
    except UserError as error:
        pytest.skip(str(error))


def llama_engine(gguf: Path) -> Any:
    from optimizer.backends.llamacpp.engine import LlamaCppEngine
    from optimizer.backends.llamacpp.settings import LlamaCppSettings

    return LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=2)


def test_llamacpp_context_too_large_to_make_fails_alone(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed size was kept with no context left: every later request, however small,
    re-made the failed size and failed with it (the engine never served again)."""
    from optimizer.backends.llamacpp import native
    from optimizer.backends.llamacpp.errors import LlamaCppBuildError

    real = native.Context

    def small_memory(model: Any, vocab: int, params: native.ContextParams) -> native.Context:
        if params.sequence_tokens > ROOM_TOKENS:
            raise LlamaCppBuildError(f"out of memory for {params.sequence_tokens} tokens")
        return real(model, vocab, params)

    monkeypatch.setattr(native, "Context", small_memory)
    engine = llama_engine(gguf)
    try:
        prompt = list(range(100, 110))
        assert engine.generate(torch.tensor([prompt]), 3).token_ids is not None  # a context exists
        with pytest.raises(LlamaCppBuildError, match="out of memory for 3072 tokens"):
            engine.submit(prompt, 3000)
        request = engine.submit(prompt, 4)
        (served,) = engine.collect(30.0)
        assert served.request_id == request and served.error is None and len(served.token_ids) == 4
        generation = engine.generate(torch.tensor([prompt]), 4)
        assert generation.token_ids is not None and generation.token_ids.tolist() == [list(served.token_ids)]
        with pytest.raises(LlamaCppBuildError, match="out of memory for 2048 tokens"):
            engine.reserve(2000)  # refused with its own size, and again not kept
        engine.reserve(900)
        assert engine.sequence_tokens >= 900
    finally:
        engine.close()


def test_llamacpp_generate_with_a_bad_row_submits_none(gguf: Path) -> None:
    """The first row was submitted before the second's refusal: it ran on, held its sequence
    (reserve() refused to resize "while requests run") and left its result in `_own` forever."""
    engine = llama_engine(gguf)
    try:
        with pytest.raises(ValueError, match="token id 60000 is outside the model's vocabulary of 49152"):
            engine.generate(torch.tensor([[5, 6, 7], [5, 6, 60000]]), 200)
        engine.reserve(2000)  # nothing runs: the context can be re-made at once
        time.sleep(0.2)
        assert engine._own == {} and engine._own_ids == set()
    finally:
        engine.close()
