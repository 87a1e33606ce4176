"""What a continuous-batching request must be before it reaches transformers' manager."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optimizer.backends import completions


def check_request(model: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    """`completions.check_request` against the model's input embedding: in the manager, a token
    outside it raises IndexError in the loop thread, which fails every request of the step and
    stops the thread for good."""
    embeddings = getattr(model, "get_input_embeddings", None)  # None: closed, or not a HF model
    vocab = int(embeddings().num_embeddings) if embeddings is not None else None
    completions.check_request(prompt_ids, max_new_tokens, vocab)
