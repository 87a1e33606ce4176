"""The llama.cpp engine's threads over a fake native layer (no llama.cpp): cancelling a stream,
a failed step, requests that could never finish, a generate() that timed out."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.engine import LlamaCppEngine
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.measure.serving import Completion

STEP_SECONDS = 0.02  # each fake llama_decode, run without the GIL as the real one is


class FakeContext:
    fail_next = False

    def __init__(self, model: object, vocab: int, params: native.ContextParams) -> None:
        self.params, self.vocab = params, vocab

    def decode(self, tokens: list[int], positions: Any, sequences: Any, outputs: list[bool]) -> np.ndarray:
        time.sleep(STEP_SECONDS)
        if FakeContext.fail_next:
            FakeContext.fail_next = False
            raise RuntimeError("llama_decode returned -3")
        return np.zeros((sum(outputs), self.vocab), dtype=np.float32)

    def clear(self) -> None: ...
    def trim(self, sequence: int, keep: int = 0) -> None: ...
    def copy(self, source: int, target: int) -> None: ...
    def close(self) -> None: ...


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppEngine]:
    monkeypatch.setattr(native, "load_model", lambda path, gpu_layers: object())
    monkeypatch.setattr(native, "free_model", lambda model: None)
    monkeypatch.setattr(native, "n_vocab", lambda model: 16)
    monkeypatch.setattr(native, "Context", FakeContext)
    FakeContext.fail_next = False
    engine = LlamaCppEngine(Path("fake.gguf"), LlamaCppSettings(), threads=1, sequences=4)
    engine.reserve(512)
    yield engine
    engine.close()


def collected(engine: LlamaCppEngine, count: int, seconds: float = 5.0) -> dict[str, Completion]:
    done: dict[str, Completion] = {}
    deadline = time.monotonic() + seconds
    while len(done) < count and time.monotonic() < deadline:
        done.update({c.request_id: c for c in engine.collect(0.1)})
    return done


def test_cancel_all_stops_the_running_requests_within_a_step(engine: LlamaCppEngine) -> None:
    """The loop thread took the lock back before cancel_all woke, so cancel_all waited for 4
    requests of 300 tokens to decode to their end (~6 s here): a stream's give-up time, and so
    its given-up requests' TTFT, counted all of it."""
    for i in range(4):
        engine.submit([1, 2, 3, i], 300)
    time.sleep(0.2)
    start = time.perf_counter()
    engine.cancel_all()
    assert time.perf_counter() - start < 0.5  # a few steps at most, not ~290
    assert engine.collect(0.1) == []
    rid = engine.submit([1, 2], 2)  # and it serves again
    assert list(collected(engine, 1)) == [rid]


def test_a_request_submitted_while_a_failed_step_is_handled_is_not_lost(engine: LlamaCppEngine) -> None:
    """The failed step's requests were dropped outside the lock: a submit between the copy of the
    waiting queue and its clearing was neither failed nor served."""
    handling, submitted = threading.Event(), threading.Event()

    class Waiting(collections.deque):  # type: ignore[type-arg]
        armed = True

        def __iter__(self) -> Iterator[Any]:  # drop_all's copy of the queue
            items = list(collections.deque.__iter__(self))
            if Waiting.armed and threading.current_thread().name == "wattsmith-llamacpp":
                Waiting.armed = False
                handling.set()
                submitted.wait(0.5)  # a submit would run here if the lock were free
            return iter(items)

    engine._slots.waiting = Waiting()
    FakeContext.fail_next = True
    first = engine.submit([1, 2, 3], 4)
    assert handling.wait(5)
    second = engine.submit([4, 5, 6], 4)  # blocks until the failure is handled, then is served
    submitted.set()
    done = collected(engine, 2)
    assert done[first].error == "RuntimeError: llama_decode returned -3"
    assert second in done and done[second].error is None and len(done[second].token_ids) == 4


@pytest.mark.parametrize(
    ("prompt", "new", "says"),
    [([], 4, "at least one prompt token"), ([1, 2], 0, "max_new_tokens must be >= 1")],
)
def test_a_request_that_could_never_finish_is_refused(
    engine: LlamaCppEngine, prompt: list[int], new: int, says: str
) -> None:
    """No prompt token: never a first token, its slot busy and the loop thread spinning."""
    with pytest.raises(ValueError, match=says):
        engine.submit(prompt, new)


def test_a_token_outside_the_vocabulary_is_refused_at_submit(engine: LlamaCppEngine) -> None:
    """In a step, llama_decode would fail it and every other request running beside it."""
    with pytest.raises(ValueError, match="token id 16 is outside the model's vocabulary of 16"):
        engine.submit([1, 16, 2], 4)
    with pytest.raises(ValueError, match="token id -1"):
        engine.submit([-1], 4)


def test_a_timed_out_generate_cancels_its_own_requests_only(engine: LlamaCppEngine) -> None:
    """A generate() that timed out left its requests decoding and their ids in `_own_ids`: they
    held the slots (the next generate() timed out behind them) and their results piled up in
    `_own`, read by nobody. Another caller's request must go on."""
    engine.result_timeout_seconds = 0.2
    stream = engine.submit([9, 9], 20)
    with pytest.raises(TimeoutError):
        engine.generate(torch.tensor([[1, 2, 3]] * 6), 300)  # 3 of them in the free slots, 3 wait
    engine.result_timeout_seconds = 2.0
    start = time.perf_counter()
    assert engine.generate(torch.tensor([[5, 6]]), 2).batch_size == 1
    assert time.perf_counter() - start < 1.0  # a few steps, not behind 300-token requests (~6 s)
    done = collected(engine, 1)
    assert list(done) == [stream] and len(done[stream].token_ids) == 20
    with engine._cond:
        assert not engine._own and not engine._own_ids and not engine._slots.busy


def test_more_sequences_than_n_batch_raise_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp aborted the whole process (GGML_ASSERT n_outputs_max) making a context of more
    sequences than n_batch: the engine refuses them before it loads anything."""

    def load_model(path: Path, gpu_layers: int) -> object:
        raise AssertionError("the model must not load")

    monkeypatch.setattr(native, "load_model", load_model)
    with pytest.raises(ValueError, match="48 slots cannot decode in a batch of 32 tokens"):
        LlamaCppEngine(Path("fake.gguf"), LlamaCppSettings(n_batch=32, n_ubatch=32), threads=1, sequences=48)
