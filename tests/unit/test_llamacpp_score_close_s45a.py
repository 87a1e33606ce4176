"""score() of the llama.cpp engine while another thread close()s it: close() must not free the
probe's context or the model under a decode in flight (a use after free crashes llama.cpp), and a
context score() makes must not outlive the model. llama.cpp is faked."""

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

VOCAB = 8
DECODE_SECONDS = 0.3


class FakeModel:
    freed = False


class CheckingContext:
    """A context that records a decode on freed memory: its own, or the model's."""

    made: list[CheckingContext] = []

    def __init__(self, model: Any, vocab: int, params: Any) -> None:
        if model is None or model.freed:
            raise AssertionError("a context made from a freed model")
        self.model, self.params, self.closed = model, params, False
        self.misuse: list[str] = []
        CheckingContext.made.append(self)

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[bool]
    ) -> np.ndarray:
        time.sleep(DECODE_SECONDS)  # close() runs meanwhile
        if self.closed or self.model.freed:
            self.misuse.append("decode on a freed context or model")
        return np.zeros((sum(outputs), VOCAB), np.float32)

    def clear(self) -> None:
        if self.closed:
            self.misuse.append("clear on a freed context")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaCppEngine]:
    native = engine_module.native
    monkeypatch.setattr(native, "load_model", lambda path, gpu: FakeModel())
    monkeypatch.setattr(native, "n_vocab", lambda model: VOCAB)
    monkeypatch.setattr(native, "free_model", lambda model: setattr(model, "freed", True))
    monkeypatch.setattr(native, "Context", CheckingContext)
    CheckingContext.made = []
    engine = LlamaCppEngine(Path("fake.gguf"), LlamaCppSettings(), threads=1, sequences=1)
    yield engine
    engine.close()


def test_close_waits_for_a_score_in_flight(engine: LlamaCppEngine) -> None:
    """Before: close() freed the probe's context and the model while score() decoded on them."""
    errors: list[BaseException] = []

    def score() -> None:
        try:
            engine.score(torch.ones((2, 4), dtype=torch.long))
        except RuntimeError as exc:  # a score after close: refused, not crashed
            errors.append(exc)

    scorer = threading.Thread(target=score, daemon=True)
    scorer.start()
    time.sleep(DECODE_SECONDS / 3)  # score() is in its first decode
    engine.close()
    scorer.join(5)
    assert not scorer.is_alive()
    assert [m for c in CheckingContext.made for m in c.misuse] == []
    assert all(c.closed for c in CheckingContext.made), "a context left unfreed"
    assert engine.model is None and engine._score_ctx is None


def test_score_after_close_is_refused(engine: LlamaCppEngine) -> None:
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.score(torch.ones((1, 2), dtype=torch.long))
    assert CheckingContext.made == []
