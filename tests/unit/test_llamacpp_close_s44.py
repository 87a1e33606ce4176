"""close() of the llama.cpp engine wakes a generate() or collect() waiting in another thread with
"the engine was closed", not after generate's whole result timeout (600 s by default). llama.cpp
is faked: each step takes a little time, as a real decode does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optimizer.backends.llamacpp import engine as engine_module
from optimizer.backends.llamacpp.engine import LlamaCppEngine
from optimizer.backends.llamacpp.settings import LlamaCppSettings

VOCAB = 32
TIMEOUT = 8.0  # generate's result timeout: what a waiter waited out before the fix


class SlowContext:
    """A llama.cpp context whose every decode takes STEP seconds."""

    STEP = 0.02

    def __init__(self, model: Any, vocab: int, params: Any) -> None:
        self.params = params

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[bool]
    ) -> np.ndarray:
        time.sleep(self.STEP)
        return np.zeros((sum(outputs), VOCAB), np.float32)

    def trim(self, sequence: int, keep: int = 0) -> bool:
        return True

    def copy(self, source: int, target: int) -> None:
        pass

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppEngine]:
    native = engine_module.native
    monkeypatch.setattr(native, "load_model", lambda path, gpu: object())
    monkeypatch.setattr(native, "n_vocab", lambda model: VOCAB)
    monkeypatch.setattr(native, "free_model", lambda model: None)
    monkeypatch.setattr(native, "Context", SlowContext)
    engine = LlamaCppEngine(
        Path("fake.gguf"), LlamaCppSettings(), threads=1, sequences=2, result_timeout_seconds=TIMEOUT
    )
    yield engine
    engine.close()


def close_soon(engine: LlamaCppEngine) -> threading.Thread:
    closer = threading.Thread(target=lambda: (time.sleep(0.3), engine.close()), daemon=True)
    closer.start()
    return closer


def test_close_fails_a_waiting_generate_at_once(engine: LlamaCppEngine) -> None:
    """Before: generate() raised TimeoutError("llama.cpp returned no result for 8.0 s") only
    when its timeout ran out, 8 s after close() had stopped the loop its requests ran on."""
    closer = close_soon(engine)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the engine was closed"):
        engine.generate(torch.ones((2, 4), dtype=torch.long), 100_000)  # never done on its own
    assert time.monotonic() - start < 3.0
    closer.join(5)
    assert not closer.is_alive()


def test_close_fails_a_waiting_collect_at_once(engine: LlamaCppEngine) -> None:
    """Before: collect() returned an empty list, and every later call at once: a stream's
    collect loop spun until its own deadline."""
    engine.submit([1, 2, 3], 100_000)
    closer = close_soon(engine)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the engine was closed"):
        engine.collect(TIMEOUT)
    assert time.monotonic() - start < 3.0
    closer.join(5)
    with pytest.raises(RuntimeError, match="the engine was closed"):
        engine.collect(0.0)


def test_results_finished_before_close_are_still_collected(engine: LlamaCppEngine) -> None:
    request = engine.submit([1, 2, 3], 2)
    deadline = time.monotonic() + 5
    while not engine._done and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    done = engine.collect(0.0)
    assert [c.request_id for c in done] == [request] and done[0].error is None


def test_a_woken_generate_closing_too_frees_the_model_once(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generate() woken by close() at once may close() the engine itself (its caller's cleanup)
    while the first close() still joins the loop thread: both freed the contexts and the model (a
    double free crashes llama.cpp), or one read the thread the other had just dropped."""
    freed: list[object] = []
    monkeypatch.setattr(engine_module.native, "free_model", freed.append)
    monkeypatch.setattr(SlowContext, "STEP", 0.5)  # the first close() joins a step this long
    closer = close_soon(engine)
    with pytest.raises(RuntimeError, match="the engine was closed"):
        try:
            engine.generate(torch.ones((1, 4), dtype=torch.long), 100_000)
        finally:
            engine.close()
    closer.join(5)
    assert len(freed) == 1 and engine.model is None
