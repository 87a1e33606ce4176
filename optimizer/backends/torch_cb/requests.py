"""What a continuous-batching request must be before it reaches transformers' manager."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optimizer.backends import completions


def learned_position_limit(model: Any) -> int | None:
    """The most positions a model with a learned position table can look up (its config's
    `max_position_embeddings`, GPT-2's `n_positions`); None for a model without one. The table
    is found by name (GPT-2's `wpe`, OPT's `embed_positions`): rotary and ALiBi models have none,
    and no hard limit."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int) or not hasattr(model, "named_modules"):
        return None
    tokens = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        is_table = isinstance(module, torch.nn.Embedding) and module is not tokens
        if is_table and (leaf == "wpe" or "position" in leaf):
            return limit
    return None


def check_request(
    model: Any, prompt_ids: Sequence[int], max_new_tokens: int, position_limit: int | None = None
) -> None:
    """`completions.check_request` against the model's input embedding: in the manager, a token
    outside it raises IndexError in the loop thread, which fails every request of the step and
    stops the thread for good. A position past `position_limit` (`learned_position_limit`) does
    the same with a learned position table."""
    embeddings = getattr(model, "get_input_embeddings", None)  # None: closed, or not a HF model
    vocab = int(embeddings().num_embeddings) if embeddings is not None else None
    completions.check_request(prompt_ids, max_new_tokens, vocab)
    # the last new token is never fed back: positions 0 .. prompt + new - 2 are looked up
    # (measured on GPT-2 with n_positions 32: 31 + 2 and 30 + 3 ran, 32 + 2 and 33 + 1 failed)
    if position_limit is not None and len(prompt_ids) + max_new_tokens - 1 > position_limit:
        raise ValueError(
            f"a prompt of {len(prompt_ids)} tokens and {max_new_tokens} new tokens needs "
            f"{len(prompt_ids) + max_new_tokens - 1} positions; the model has {position_limit}"
        )
