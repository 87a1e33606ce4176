"""loop=slots defects found by the s43 hunt: a failed build must not poison the engine's later
requests, and a generate() that fails must not leave its other rows to the next call."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from optimizer.backends.torch import slot_server
from optimizer.backends.torch.slot_decoder import SlotDecoder
from optimizer.backends.torch.slot_server import SlotEngine
from unit.backends.torch.test_slot_loop import greedy, prompts, tiny_llama

ROOM_TOKENS = 1024  # the largest region the fake device below has memory for


class SmallDevice(SlotDecoder):
    """A decoder whose regions fail to allocate past ROOM_TOKENS (a GPU out of memory)."""

    def __init__(self, model: Any, slots: int, max_sequence_tokens: int, *args: Any, **kwargs: Any) -> None:
        if max_sequence_tokens > ROOM_TOKENS:
            raise RuntimeError(f"out of memory for {max_sequence_tokens} tokens")
        super().__init__(model, slots, max_sequence_tokens, *args, **kwargs)


def test_a_request_too_long_to_build_for_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request asks for more than can be built: it fails with the build's error, and the
    requests after it are built for their own size, not the failed one's (the engine served
    nothing again: every later request and generate() retried the failed size)."""
    monkeypatch.setattr(slot_server, "SlotDecoder", SmallDevice)
    model = tiny_llama()
    engine = SlotEngine(model, 2, "cpu")
    try:
        prompt = prompts(6, seed=1)[0]
        engine.submit(prompt, 4000)
        failed = engine.collect(30.0)
        assert len(failed) == 1 and "out of memory for 4096 tokens" in str(failed[0].error)
        engine.submit(prompt, 4)
        served = engine.collect(30.0)
        assert [(c.error, list(c.token_ids)) for c in served] == [(None, greedy(model, prompt, 4))]
        generation = engine.generate(torch.tensor([prompt]), 3)
        assert generation.token_ids is not None
        assert generation.token_ids.tolist() == [greedy(model, prompt, 3)]
        with pytest.raises(RuntimeError, match="out of memory for 2048 tokens"):
            engine.reserve(2000)  # still refused with its own error, and still not sticky
        assert engine.reserve(300).decoder is not None
    finally:
        engine.close()


def test_a_failed_generate_leaves_nothing_for_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """One slot, three rows: the first row's step fails. generate() raises, and its two other
    rows (waiting for the slot) are dropped: they used to run on, and the next generate() took
    their completions for its own (KeyError) or raised their errors as its own."""
    model = tiny_llama()
    engine = SlotEngine(model, 1, "cpu")
    try:
        engine.reserve(64)
        assert engine.decoder is not None
        run_step = engine.decoder.run_step
        calls: list[int] = []

        def fail_first(busy: int, columns: int) -> None:
            calls.append(busy)
            if len(calls) == 1:
                raise RuntimeError("device lost")
            run_step(busy, columns)

        monkeypatch.setattr(engine.decoder, "run_step", fail_first)
        with pytest.raises(RuntimeError, match="request s1 failed: RuntimeError: device lost"):
            engine.generate(torch.tensor(prompts(6, 6, 6, seed=1)), 5)
        time.sleep(0.2)  # rows left running would finish meanwhile
        assert engine.first_token_times() == {}
        assert engine.collect(0.1) == []
        rows = prompts(7, 7, seed=2)
        generation = engine.generate(torch.tensor(rows), 4)
        assert generation.token_ids is not None
        assert generation.token_ids.tolist() == [greedy(model, r, 4) for r in rows]
    finally:
        engine.close()
