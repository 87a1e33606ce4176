"""The slot loop's KV cache: a static region per slot in every layer, written at per-row positions."""

from __future__ import annotations

from typing import Any

import torch


class SlotCache:
    """Per-slot static K/V for every layer, written at per-row positions.

    Decoding `n` rows: row i is slot i and writes at `positions[i]`; attention sees the first
    `len(key_columns)` columns of slots 0..n-1's regions (the mask picks each slot's own keys).
    Prefilling `rows`: the prompts' K/V are written at 0..width-1 of those slots and the prompts
    attend only to themselves; or, where a prefix of a prompt is already in its slot, at
    `prefill_positions` (per row), attending to the `prefill_columns` first columns of their slots.
    All layers live in one tensor per K and V, so that moving a slot is one copy each. Rows past
    the slots (`stored`) are a prefix store no step reads (slot_prefixes.py).
    """

    def __init__(
        self,
        config: Any,
        slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
        stored: int = 0,
    ) -> None:
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        shape = (int(config.num_hidden_layers), slots + stored, kv_heads, max_len, head_dim)
        self.all_keys = torch.zeros(shape, dtype=dtype, device=device)
        self.all_values = torch.zeros(shape, dtype=dtype, device=device)
        self.keys = list(self.all_keys.unbind(0))  # views, one per layer
        self.values = list(self.all_values.unbind(0))
        self.slot_rows = torch.arange(slots, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.prefill_rows: torch.Tensor | None = None
        # a prefill after a copied prefix: each row's positions [rows, width], and the key columns
        # its prompts attend (their prefixes and themselves: 0..span-1, a tensor so that a
        # compiled prefill reads the span from its shape)
        self.prefill_positions: torch.Tensor | None = None
        self.prefill_columns: torch.Tensor | None = None
        # decode: the key columns a step attends, 0..span-1 (a view, so a compiled step reads the
        # span from its shape: one graph for every span)
        self.key_columns: torch.Tensor | None = None

    # transformers 5.x calls update(key, value, layer_idx, cache_kwargs) or (..., kwargs=...)
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.write(self.keys[layer_idx], self.values[layer_idx], key_states, value_states)

    def write(
        self, keys: torch.Tensor, values: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's new K/V into its `keys`/`values`; returns the K/V its queries attend."""
        rows = self.prefill_rows
        if rows is not None:
            positions = self.prefill_positions
            if positions is None:
                width = key_states.shape[2]
                keys[rows, :, :width] = key_states
                values[rows, :, :width] = value_states
                return key_states, value_states
            # [rows, heads, width, dim] written at [rows, width] positions, the heads kept
            keys[rows[:, None], :, positions] = key_states.transpose(1, 2)
            values[rows[:, None], :, positions] = value_states.transpose(1, 2)
            assert self.prefill_columns is not None, "SlotDecoder.prefill() sets the span"
            span = self.prefill_columns.shape[0]
            return keys[rows, :, :span], values[rows, :, :span]
        n = key_states.shape[0]  # the step's rows: slots 0..n-1
        keys, values = keys[:n], values[:n]
        # written in the whole region: an idle row's pinned position may lie past the span
        keys[self.slot_rows[:n], :, self.positions[:n]] = key_states[:, :, 0]
        values[self.slot_rows[:n], :, self.positions[:n]] = value_states[:, :, 0]
        assert self.key_columns is not None, "SlotDecoder.step() sets the span"
        span = self.key_columns.shape[0]
        return keys[:, :, :span], values[:, :, :span]

    def move(self, source: int, target: int) -> None:
        """Slot `source`'s keys, values and position into slot `target` (every layer)."""
        self.all_keys[:, target].copy_(self.all_keys[:, source])
        self.all_values[:, target].copy_(self.all_values[:, source])
        self.positions[target] = self.positions[source]

    def copy_columns(self, source: int, target: int, columns: int) -> None:
        """Row `source`'s first `columns` keys and values into row `target` (every layer)."""
        self.all_keys[:, target, :, :columns].copy_(self.all_keys[:, source, :, :columns])
        self.all_values[:, target, :, :columns].copy_(self.all_values[:, source, :, :columns])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly; nothing may infer them from the cache

    def layer_views(self) -> list[SlotLayerView]:
        """Each layer's own view, for layers that run one by one (compiling.py). Kept by the
        caller, not here: views kept on the cache would be a reference cycle, its regions freed
        only by the cyclic GC, not when the decoder goes."""
        return [SlotLayerView(self, k, v) for k, v in zip(self.keys, self.values, strict=True)]


class SlotLayerView:
    """One layer's K/V in a SlotCache. Its `update` ignores the layer index the attention passes:
    a compiled layer then holds no guard on it, and one graph serves every layer."""

    def __init__(self, cache: SlotCache, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.cache, self.keys, self.values = cache, keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.write(self.keys, self.values, key_states, value_states)
