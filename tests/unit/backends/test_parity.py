"""Greedy parity: generate-only paths must decode what the probed plain forward decodes."""

from __future__ import annotations

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.parity import check_greedy_parity, parity_error, reference_greedy

VOCAB = 50


class CountingEngine:
    """Plain forward: the next token is the last one + 1 (mod VOCAB), clearly ahead of the rest,
    or by `gap` only over the runner-up (last + 2). `generate` decodes it, or goes wrong at
    `wrong_at` by taking the runner-up."""

    def __init__(self, wrong_at: int | None = None, gap: float = 5.0) -> None:
        self.wrong_at, self.gap = wrong_at, gap

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*token_ids.shape, VOCAB)
        logits.scatter_(-1, ((token_ids + 1) % VOCAB).unsqueeze(-1), 10.0)
        logits.scatter_(-1, ((token_ids + 2) % VOCAB).unsqueeze(-1), 10.0 - self.gap)
        return logits

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        last, tokens = prompt_ids[:, -1], []
        for step in range(max_new_tokens):
            last = (last + (2 if step == self.wrong_at else 1)) % VOCAB
            tokens.append(last)
        return Generation(prompt_ids.shape[0], max_new_tokens, 0.1, 1.0, token_ids=torch.stack(tokens, dim=1))

    def close(self) -> None:
        pass


PROMPTS = torch.tensor([[3, 4, 5], [10, 11, 12], [20, 21, 22]])


def test_reference_greedy_decodes_by_plain_forwards() -> None:
    tokens, logits = reference_greedy(CountingEngine(), PROMPTS, 3)
    assert tokens.tolist() == [[6, 7, 8], [13, 14, 15], [23, 24, 25]]
    assert logits.shape == (3, 3, VOCAB)


def test_reference_greedy_never_picks_suppressed_tokens() -> None:
    """An engine that masks EOS (onnxruntime-genai) is compared with a reference that does too."""
    tokens, logits = reference_greedy(CountingEngine(), PROMPTS[:1], 3, suppressed=(7,))
    assert tokens.tolist() == [[6, 8, 9]]  # 7 was the best after 6: the runner-up 8 instead
    assert logits[0, 1, 7] == float("-inf")  # a masked token the engine picks is never a tie


def test_a_matching_engine_passes_and_its_generation_is_returned() -> None:
    generation = check_greedy_parity(CountingEngine(), PROMPTS, 12, "fp32")
    assert generation.token_ids is not None and generation.token_ids.shape == (3, 12)


def test_a_real_difference_fails_and_names_the_position() -> None:
    with pytest.raises(RuntimeError, match="prompt 0, token 2: 9 instead of 8"):
        check_greedy_parity(CountingEngine(wrong_at=2), PROMPTS, 12, "fp32")


def test_a_tie_within_the_precisions_rounding_passes() -> None:
    tied = CountingEngine(wrong_at=2, gap=0.1)
    check_greedy_parity(tied, PROMPTS, 12, "bf16")  # 0.1 is inside bf16's tie tolerance
    with pytest.raises(RuntimeError, match="tie tolerance"):
        check_greedy_parity(tied, PROMPTS, 12, "fp32")


def test_only_the_checked_tokens_count() -> None:
    check_greedy_parity(CountingEngine(wrong_at=10), PROMPTS, 12, "fp32")  # past the checked 8
    assert parity_error(torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.zeros(1, 2, VOCAB), 0.0) is None
