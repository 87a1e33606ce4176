"""Greedy parity: a continuous-batching engine must decode what the plain model decodes.

The scheduler, the paged cache and the varlen attention are transformers' code paths, not the ones
the quality probe scores, so a build checks a few greedy continuations against the same model run
without a cache. A mismatch fails the candidate with the positions and tokens, unless the plain
model's two best logits at the first difference are a tie within the precision's rounding (then
both continuations are greedy, and everything after that position legitimately differs).
"""

from __future__ import annotations

from typing import Any

import torch

from optimizer.backends.base import Engine

# Logit gaps below this are ties in bf16/fp16 (8 bits of mantissa at logits of ~10-30)
TIE_TOLERANCE = {"fp32": 1e-3, "bf16": 0.25, "fp16": 0.05}
PROMPTS = 2
PROMPT_TOKENS = 16
NEW_TOKENS = 8


def reference_greedy(hf_model: Any, prompt_ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [batch, new_tokens] and their step logits [batch, new_tokens, vocab], no cache."""
    ids = prompt_ids.to(hf_model.device)
    steps = []
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = hf_model(input_ids=ids, use_cache=False).logits[:, -1].float()
            steps.append(logits.cpu())
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt_ids.shape[1] :].cpu(), torch.stack(steps, dim=1)


def parity_error(
    engine_tokens: torch.Tensor, reference_tokens: torch.Tensor, reference_logits: torch.Tensor, tolerance: float
) -> str | None:
    """Why the engine's greedy tokens are not the reference's, or None when they are (or tie)."""
    for row in range(reference_tokens.shape[0]):
        differ = (engine_tokens[row] != reference_tokens[row]).nonzero()
        if differ.numel() == 0:
            continue
        step = int(differ[0])
        got, want = int(engine_tokens[row, step]), int(reference_tokens[row, step])
        gap = float(reference_logits[row, step, want] - reference_logits[row, step, got])
        if gap > tolerance:
            return (
                f"greedy output differs from the plain model's: prompt {row}, token {step}: "
                f"{got} instead of {want} (logit gap {gap:.3f} > tie tolerance {tolerance})"
            )
    return None


def check_greedy_parity(engine: Engine, hf_model: Any, precision: str, seed: int = 0) -> None:
    """Raise RuntimeError when `engine` does not decode greedily like `hf_model` does."""
    generator = torch.Generator().manual_seed(seed)
    # ids from the middle of the vocabulary: real tokens, never the special ones at either end
    vocab = int(hf_model.config.vocab_size)
    prompts = torch.randint(vocab // 8, vocab // 2, (PROMPTS, PROMPT_TOKENS), generator=generator)
    generation = engine.generate(prompts, NEW_TOKENS)
    if generation.token_ids is None:
        raise RuntimeError("the engine returned no token ids to check against the plain model")
    tokens, logits = reference_greedy(hf_model, prompts, NEW_TOKENS)
    error = parity_error(generation.token_ids, tokens, logits, TIE_TOLERANCE.get(precision, 1e-3))
    if error:
        raise RuntimeError(error)
