"""A decode step over a fixed set of slots, each holding one request at its own position.

The captured loop (`graph_loop.py`) decodes lockstep batches of equal prompts: every row shares one
cache position. Serving needs requests that join and leave between steps, so here every slot has a
static KV region of its own ([slots, kv_heads, max_len, head_dim] per layer), its own position, and
a mask row that lets it see its own keys only; admitting a request is a prefill that writes its
prompt's K/V into its slot and sets the slot's position and first token. Busy slots are kept at
the front (a finished request's slot takes the last busy one's), and a step runs the smallest of a
few sizes that holds them: the free slots inside that size step too, as wasted rows with their
positions pinned inside their regions. A step attends only to the key columns its longest request
has reached (the smallest of a few spans), not to every slot's whole region: on the CPU a step of
16 SmolLM2 slots took 108 ms over 1,024 columns and 78 ms over 256
(evals/results/2026-12-04-cpu-slot-spans/chat/log.txt). Each size and
span is one captured CUDA graph; compiled, the step is one compile whose row count and span are
dynamic (every other shape static), captured at each. Compiled, the prefill is compiled too (not
captured: its shapes vary), with its rows, width and span dynamic: a compiled prefill on the H200
cut the captured loop's TTFT by a third (evals/results/2026-12-04-h200-compiled-prefill/).

The model runs through transformers' own forward with a 4D additive mask (used as given, so
attention kernels that take no mask, FlashAttention's, cannot run it) and a cache
object whose `update` writes each row at its own position. The first token of a prefill is the
decoder's hidden state at each prompt's last token through the output embedding, so models whose
logits are more than that (soft-capped or scaled) are refused.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import torch

from optimizer.backends.torch.graph_loop import cache_argument, capture_step, compiled_with_room

# Prompts admitted together are padded to a multiple of this, which bounds the number of prefill
# shapes a compiled or captured run meets.
PREFILL_WIDTH_MULTIPLE = 16
# A step attends to a multiple of this many key columns (or to as many as the longest request
# can reach). On CUDA each span is one captured graph per step size, so coarser there.
KEY_SPAN_STEP_CUDA = 256
KEY_SPAN_STEP_CPU = 64


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
        keys, values = self.keys[layer_idx], self.values[layer_idx]
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


def step_sizes(slots: int) -> list[int]:
    """The row counts a step runs with: powers of two from 8, and all slots. Busy slots are kept at
    the front (`SlotDecoder.move`), so a step runs the smallest size that holds them."""
    sizes = [8]
    while sizes[-1] * 2 < slots:
        sizes.append(sizes[-1] * 2)
    return sorted({size for size in sizes if size < slots} | {slots})


def key_spans(max_sequence_tokens: int, step: int) -> list[int]:
    """The key columns a step of busy requests may attend: the multiples of `step` below
    `max_sequence_tokens`, and that (a request's last step writes at column prompt + new - 2)."""
    return (
        [*range(step, max_sequence_tokens, step), max_sequence_tokens] if step > 0 else [max_sequence_tokens]
    )


def check_supported(model: Any) -> None:
    """The prefill's first token is lm_head(hidden state): refuse models whose logits differ."""
    config = model.config
    for field in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, field, None) not in (None, 1.0):
            raise ValueError(
                f"loop=slots: {config.model_type} sets {field}; its logits are not lm_head(hidden)"
            )
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        raise ValueError(
            f"loop=slots: {config.model_type} has sliding-window layers; the slot mask is full attention"
        )


class SlotDecoder:
    """`slots` requests of at most `max_sequence_tokens` (prompt + new tokens) each."""

    def __init__(
        self,
        model: Any,
        slots: int,
        max_sequence_tokens: int,
        device: torch.device,
        compiled: bool = False,
        key_span_step: int | None = None,
        stored: int = 0,
    ) -> None:
        """`key_span_step`: the granularity of the spans a step attends (default per device; 0:
        always the whole region). `stored`: cache rows past the slots, for prefixes kept for
        reuse (no step reads them)."""
        check_supported(model)
        self.model = model
        self.slots = slots
        self.max_sequence_tokens = max_sequence_tokens
        # one spare column: a finished request's slot may run a step past its answer
        self.max_len = max_sequence_tokens + 1
        self.device = device
        dtype = model.get_input_embeddings().weight.dtype  # the activations' (fp8 layers keep bf16 here)
        self.cache = SlotCache(model.config, slots, self.max_len, dtype, device, stored)
        self.stored = stored
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.key_range = torch.arange(self.max_len, device=device)
        self.dtype = dtype
        self.decoder = model.base_model
        self.head = model.get_output_embeddings()
        self._cache_argument = cache_argument(model)
        self._decoder_cache_argument = cache_argument(self.decoder)
        self._compiled = compiled
        self._run_decode = compiled_with_room(self._decode) if compiled else self._decode
        self._run_prefill = compiled_with_room(self._prefill) if compiled else self._prefill
        self.sizes = step_sizes(slots)
        if key_span_step is None:
            key_span_step = KEY_SPAN_STEP_CUDA if device.type == "cuda" else KEY_SPAN_STEP_CPU
        self.spans = key_spans(max_sequence_tokens, key_span_step) if key_span_step else [self.max_len]
        # views made once: a compiled step sees the same inputs, their sizes marked dynamic, so
        # that every step size and span is one compile (the rest of the step's shapes are static)
        self._rows = {n: (self.tokens[:n], self.cache.positions[:n]) for n in self.sizes}
        # every span but the whole region's stops short of the spare column: a compiled slice
        # of a tensor's whole length would specialize its span
        self._key_columns = {span: self.key_range[:span] for span in self.spans}
        if compiled and len(self.sizes) > 1:
            for view in itertools.chain.from_iterable(self._rows.values()):
                torch._dynamo.mark_dynamic(view, 0)
        if compiled and len(self.spans) > 1:
            for columns in self._key_columns.values():
                torch._dynamo.mark_dynamic(columns, 0)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (rows, span) -> captured step

    def _decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        columns = self.cache.key_columns
        assert columns is not None, "step() sets the span"
        mask = self._additive((columns[None, :] <= positions[:, None])[:, None, None, :])
        out = self.model(
            input_ids=tokens,
            position_ids=positions[:, None],
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: self.cache},
        )
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """0 where a key may be seen, the dtype's lowest value elsewhere: eager attention adds the
        mask to its scores (a boolean one would be added as 0/1), SDPA takes either."""
        return torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(self.dtype).min
        )

    def step(self, rows: int | None = None, span: int | None = None) -> None:
        """The next token of slots 0..rows-1 (all by default), written to `tokens`, attending to
        key columns 0..span-1 (one of `spans`, by default the longest: every position a busy
        row writes must lie below it); their positions advance, kept inside the region (a slot
        without a request steps too)."""
        n = self.slots if rows is None else rows
        tokens, positions = self._rows.get(n) or (self.tokens[:n], self.cache.positions[:n])
        self.cache.key_columns = self._key_columns[self.spans[-1] if span is None else span]
        try:
            tokens.copy_(self._run_decode(tokens, positions))
        finally:
            self.cache.key_columns = None
        positions.add_(1).clamp_(max=self.max_len - 1)

    def rows_for(self, busy: int) -> int:
        """The smallest step size that holds slots 0..busy-1."""
        return next(size for size in self.sizes if size >= busy)

    def span_for(self, columns: int) -> int:
        """The smallest span that holds key columns 0..columns-1."""
        if not 0 < columns <= self.spans[-1]:
            raise ValueError(f"a step attends 1..{self.spans[-1]} key columns, asked for {columns}")
        return next(span for span in self.spans if span >= columns)

    def move(self, source: int, target: int) -> None:
        """Slot `source`'s request (cache, position, next token) into slot `target`."""
        self.cache.move(source, target)
        self.tokens[target] = self.tokens[source]

    def prefill(
        self,
        slots: Sequence[int],
        prompts: Sequence[Sequence[int]],
        cached: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Write the prompts' K/V into their slots and each first token into `tokens`; returns the
        first tokens [len(slots)] (on the device). `cached[i]`: the first tokens of prompt i whose
        K/V is already in its slot (copied from a prefix kept for reuse): only the rest of the
        prompt is computed, attending to them."""
        longest = max(len(p) for p in prompts)
        if longest < 1 or longest >= self.max_sequence_tokens:
            raise ValueError(
                f"prompts of 1..{self.max_sequence_tokens - 1} tokens fit these slots, got {longest}"
            )
        starts = list(cached) if cached is not None else [0] * len(prompts)
        if any(not 0 <= start < len(p) for start, p in zip(starts, prompts, strict=True)):
            raise ValueError(f"cached prefixes must leave a prompt token to compute, got {starts}")
        rests = [p[start:] for start, p in zip(starts, prompts, strict=True)]
        # width and span stop short of the spare column (a prompt's last token lies before it): a
        # compiled slice of a region's whole length would specialize them
        edge = self.max_len - 1
        width = min(-(-max(map(len, rests)) // PREFILL_WIDTH_MULTIPLE) * PREFILL_WIDTH_MULTIPLE, edge)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, rest in enumerate(rests):
            ids[row, : len(rest)] = torch.tensor(rest)
        ids = ids.to(self.device)
        lengths = torch.tensor([len(r) for r in rests], device=self.device)
        rows = torch.tensor(list(slots), device=self.device)
        offsets = torch.arange(width, device=self.device)
        if any(starts):
            # a row's padding lies past its prompt: written at the spare column at the latest
            positions = (torch.tensor(starts, device=self.device)[:, None] + offsets).clamp(
                max=self.max_len - 1
            )
            columns = torch.arange(min(max(starts) + width, edge), device=self.device)
            # each query sees its slot's keys up to its own position: the cached prefix, then itself
            mask = self._additive((columns[None, None, :] <= positions[:, :, None])[:, None])
            self.cache.prefill_positions, self.cache.prefill_columns = positions, columns
        else:
            positions = offsets[None].repeat(len(prompts), 1)  # not a view: one stride for every prefill
            causal = offsets[None, :] <= offsets[:, None]
            mask = self._additive(
                causal[None, None] & (offsets[None, :] < lengths[:, None])[:, None, None, :]
            )
        self.cache.prefill_rows = rows
        if self._compiled:
            self._mark_prefill_dynamic(ids, positions, mask, lengths)
        try:
            first = self._run_prefill(ids, positions, mask, lengths)
        finally:
            self.cache.prefill_rows = self.cache.prefill_positions = self.cache.prefill_columns = None
        self.tokens[rows, 0] = first
        self.cache.positions[rows] = torch.tensor([len(p) for p in prompts], device=self.device)
        return first

    def _prefill(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The prompts' K/V into the cache rows set on it; the first token of each [rows]."""
        hidden = self.decoder(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{self._decoder_cache_argument: self.cache},
        ).last_hidden_state
        last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        return self.head(last).argmax(-1)

    def _mark_prefill_dynamic(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        """Rows, width and span vary from one admission to the next: marked dynamic, they make one
        compile per kind of prefill (with or without a copied prefix; one row, or more: dynamo
        specializes a size of 1, which broadcasting needs to know), not one per shape."""
        cache = self.cache
        dims: list[tuple[torch.Tensor | None, tuple[int, ...]]] = [
            (ids, (0, 1)),
            (positions, (0, 1)),
            (mask, (0, 2, 3)),
            (lengths, (0,)),
            (cache.prefill_rows, (0,)),
            (cache.prefill_positions, (0, 1)),
            (cache.prefill_columns, (0,)),
        ]
        for tensor, variable in dims:
            if tensor is not None:
                torch._dynamo.mark_dynamic(tensor, list(variable))

    def compile_prefills(self) -> None:
        """Compile (when compiled) every kind of prefill a stream will meet, before any request is
        admitted: one row and more, and after a copied prefix where rows are stored. Writes only
        slots that hold nothing yet, whose positions are then reset."""
        if not self._compiled or self.max_sequence_tokens < 3:
            return
        for rows in sorted({1, min(2, self.slots)}):
            prompts = [[0, 0]] * rows
            self.prefill(range(rows), prompts)
            if self.stored:
                self.prefill(range(rows), prompts, cached=[1] * rows)
        self.cache.positions.zero_()
        self.tokens.zero_()

    def capture(self) -> None:
        """Capture a step of each size and span as a CUDA graph (CUDA only), largest first,
        sharing one memory pool. Runs before any request is admitted: the warm-up steps write
        only into slots that hold nothing yet, whose positions are then reset."""
        pool = torch.cuda.graph_pool_handle()
        for rows in sorted(self.sizes, reverse=True):
            for span in sorted(self.spans, reverse=True):
                self.graphs[rows, span] = capture_step(functools.partial(self.step, rows, span), pool)
        self.cache.positions.zero_()

    def run_step(self, busy: int, columns: int) -> None:
        """One step of the smallest size holding slots 0..busy-1 and the smallest span holding key
        columns 0..columns-1 (the longest busy request's prompt and tokens so far): its captured
        graph when there is one, else launched eagerly."""
        rows = self.rows_for(busy)
        span = self.span_for(columns)
        graph = self.graphs.get((rows, span))
        if graph is not None:
            graph.replay()
        else:
            self.step(rows, span)
