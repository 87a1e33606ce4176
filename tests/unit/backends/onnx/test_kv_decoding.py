"""StepEngine: the greedy loop over any DecoderSteps runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizer.backends.onnx.kv_decoding import StepEngine

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


class NoTokensSteps(CountingSteps):
    """Runs, but generates a single token whatever is asked."""

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        return super().step(input_ids)[:0]


def test_load_check_passes_a_working_engine() -> None:
    from optimizer.backends.base import load_check

    steps = CountingSteps()
    load_check(StepEngine(steps))
    assert not steps.closed


def test_load_check_closes_the_engine_and_raises_the_backends_error() -> None:
    from optimizer.backends.base import load_check

    class BuildError(RuntimeError):
        pass

    steps = NoTokensSteps()
    with pytest.raises(BuildError, match="generation returned no tokens"):
        load_check(StepEngine(steps), BuildError)
    assert steps.closed


def test_empty_past_shape_has_no_cached_tokens() -> None:
    from optimizer.backends.onnx.export import DecoderLayout

    assert DecoderLayout(num_layers=2, kv_heads=3, head_dim=8).empty_past_shape(4) == (4, 3, 0, 8)
