"""`sdpa_gqa`: SDPA whose single-token decode queries are packed per KV head.

With grouped-query attention (Qwen2-0.5B: 14 query heads over 2 KV heads) transformers' SDPA path
repeats every cached K and V `num_key_value_groups` times before calling the kernel whenever a mask
is passed or the model runs under torch.compile. A static KV cache always needs a mask, so a
compiled decode step at batch 1024 wrote and re-read ~0.7 GB of repeated K/V per layer per step.
Here a decode step's query [batch, heads, 1, dim] becomes [batch, kv_heads, groups, dim]: each KV
head's group of queries attends to that head's cache directly, and the [batch, 1, 1, keys] mask
broadcasts over heads and groups. Prefill (several query tokens) is transformers' own SDPA path.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "sdpa_gqa"


def sdpa_gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    batch, heads, query_tokens, dim = query.shape
    if query_tokens != 1 or groups == 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # query head h reads KV head h // groups (transformers' repeat_kv order), so a plain reshape
    # puts each KV head's queries side by side
    packed = query.reshape(batch, heads // groups, groups, dim)
    if attention_mask is not None and attention_mask.shape[1] != 1:
        attention_mask = attention_mask.reshape(batch, heads // groups, groups, -1)
    output = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="sdpa_gqa"` loadable, with SDPA's masks. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_gqa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
