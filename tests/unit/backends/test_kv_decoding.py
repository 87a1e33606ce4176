"""StepEngine: the greedy loop over any DecoderSteps runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizer.backends.kv_decoding import StepEngine

VOCAB = 11


class CountingSteps:
    """Next token = (last token + cache length) % VOCAB; logits one-hot of the next token."""

    def __init__(self, max_batch: int | None = None) -> None:
        self.max_batch = max_batch
        self.length = 0
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.closed = False

    def start(self, batch_size: int) -> None:
        self.length = 0
        self.calls.append(("start", (batch_size,)))

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        assert input_ids.dtype == np.int64
        self.calls.append(("step", input_ids.shape))
        self.length += input_ids.shape[1]
        return (input_ids[:, -1] + self.length) % VOCAB

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        if self.max_batch is not None:
            assert input_ids.shape[0] <= self.max_batch
        self.calls.append(("logits", input_ids.shape))
        return np.eye(VOCAB, dtype=np.float32)[(input_ids + 1) % VOCAB]

    def close(self) -> None:
        self.closed = True


def test_generate_prefills_once_then_decodes_one_token_per_step() -> None:
    steps = CountingSteps()
    gen = StepEngine(steps).generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), 4)
    assert steps.calls == [("start", (2,)), ("step", (2, 3))] + [("step", (2, 1))] * 3
    assert gen.batch_size == 2 and gen.new_tokens == 4 and gen.output_tokens == 8
    assert 0 < gen.ttft_seconds <= gen.total_seconds
    # prompt [1,2,3]: (3+3)%11=6, (6+4)%11=10, (10+5)%11=4, (4+6)%11=10
    assert gen.token_ids is not None and gen.token_ids[0].tolist() == [6, 10, 4, 10]
    assert gen.token_ids.dtype == torch.int64


def test_score_splits_batches_the_runtime_cannot_take() -> None:
    steps = CountingSteps(max_batch=2)
    ids = torch.arange(15).reshape(5, 3)
    logits = StepEngine(steps).score(ids)
    assert logits.shape == (5, 3, VOCAB) and logits.dtype == torch.float32
    assert [shape for kind, shape in steps.calls] == [(2, 3), (2, 3), (1, 3)]
    assert torch.equal(logits.argmax(-1), (ids + 1) % VOCAB)


def test_a_closed_engine_refuses_work() -> None:
    steps = CountingSteps()
    engine = StepEngine(steps)
    engine.close()
    assert steps.closed
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(torch.tensor([[1]]), 2)
    engine.close()  # idempotent
