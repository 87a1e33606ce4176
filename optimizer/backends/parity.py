"""Greedy parity: code paths the quality probe never runs must decode what the probed model does.

The probe scores plain forward passes (`Engine.score`). Continuous batching (a scheduler, a paged
cache, varlen attention), compiled generation, a static cache, the captured decode loop and
decode-only attention kernels act only inside `generate`, so their output is checked against
greedy decoding by repeated plain forwards of the same engine. A mismatch fails the candidate with
the position and tokens, unless the plain forward's two best logits at the first difference are a
tie within the precision's rounding (both continuations are then greedy, and everything after that
position legitimately differs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optimizer.backends.base import Engine, Generation

# Logit gaps below this are ties in bf16/fp16 (8 bits of mantissa at logits of ~10-30)
TIE_TOLERANCE = {"fp32": 1e-3, "bf16": 0.25, "fp16": 0.05}
CHECKED_ROWS = 2
CHECKED_TOKENS = 8


def reference_greedy(
    engine: Engine, prompt_ids: torch.Tensor, new_tokens: int, suppressed: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [batch, new_tokens] and their step logits [batch, new_tokens, vocab] from
    repeated plain forwards (`engine.score`, no cache). `suppressed`: token ids never picked (their
    logits -inf), for an engine that masks them (onnxruntime-genai masks EOS to produce exactly
    the tokens asked for; it cannot be made to keep EOS and go on)."""
    ids = prompt_ids.cpu()
    masked = torch.tensor(list(suppressed), dtype=torch.int64)
    steps = []
    for _ in range(new_tokens):
        logits = engine.score(ids)[:, -1].float().index_fill(-1, masked, float("-inf"))
        steps.append(logits)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt_ids.shape[1] :], torch.stack(steps, dim=1)


def parity_error(
    engine_tokens: torch.Tensor,
    reference_tokens: torch.Tensor,
    reference_logits: torch.Tensor,
    tolerance: float,
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
                f"greedy output differs from the plain forward's: prompt {row}, token {step}: "
                f"{got} instead of {want} (logit gap {gap:.3f} > tie tolerance {tolerance})"
            )
    return None


def check_greedy_parity(
    engine: Engine, prompt_ids: torch.Tensor, new_tokens: int, precision: str
) -> Generation:
    """Generate `prompt_ids` [batch, tokens] with `engine` (its warm-up too: compiled and captured
    paths build here), and raise RuntimeError when the first rows' first tokens are not what plain
    forwards decode. Returns the generation."""
    generation = engine.generate(prompt_ids, new_tokens)
    if generation.token_ids is None:
        raise RuntimeError("the engine returned no token ids to check against the plain forward")
    rows, steps = min(CHECKED_ROWS, prompt_ids.shape[0]), min(CHECKED_TOKENS, new_tokens)
    tokens, logits = reference_greedy(engine, prompt_ids[:rows], steps)
    error = parity_error(
        generation.token_ids[:rows, :steps],
        tokens,
        logits,
        TIE_TOLERANCE.get(precision, TIE_TOLERANCE["fp32"]),
    )
    if error:
        raise RuntimeError(error)
    return generation


def random_prompts(
    vocab_size: int, rows: int = CHECKED_ROWS, tokens: int = 16, seed: int = 0
) -> torch.Tensor:
    """Prompt ids from the middle of the vocabulary: real tokens, never the special ones at either end."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size // 8, vocab_size // 2, (rows, tokens), generator=generator)
