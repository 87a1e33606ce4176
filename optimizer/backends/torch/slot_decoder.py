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

from optimizer.backends.torch.compiling import (
    LayerwiseForward,
    additive_mask,
    cache_argument,
    compiled_with_room,
)
from optimizer.backends.torch.graph_loop import capture_step
from optimizer.backends.torch.slot_cache import SlotCache

# Prompts admitted together are padded to a multiple of this, which bounds the number of prefill
# shapes a compiled or captured run meets.
PREFILL_WIDTH_MULTIPLE = 16
# A step attends to a multiple of this many key columns (or to as many as the longest request
# can reach). On CUDA each span is one captured graph per step size, so coarser there.
KEY_SPAN_STEP_CUDA = 256
KEY_SPAN_STEP_CPU = 64


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
    # Granite's logits_scaling divides (HyperCLOVA X's multiplies); Cohere's logit_scale multiplies
    for field in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
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
        compile_layers: bool = False,
    ) -> None:
        """`key_span_step`: the granularity of the spans a step attends (default per device; 0:
        always the whole region). `stored`: cache rows past the slots, for prefixes kept for
        reuse (no step reads them). `compile_layers`: run the layers one by one, compiled as one
        graph that serves them all (compiling.py), not the whole model as one graph."""
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
        self._cache_argument = cache_argument(self.decoder)
        self._compiled = compiled
        self._layerwise = LayerwiseForward(model, compiled) if compile_layers else None
        self._layer_views = self.cache.layer_views()
        whole = compiled and not compile_layers
        # functions called with the decoder, not its bound methods: a decoder holding those is a
        # reference cycle, its regions freed only by the cyclic GC, not when the engine drops it
        decode, prefill = SlotDecoder._decode, SlotDecoder._prefill
        self._run_decode = compiled_with_room(decode) if whole else decode
        self._run_prefill = compiled_with_room(prefill) if whole else prefill
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
        mask = additive_mask((columns[None, :] <= positions[:, None])[:, None, None, :], self.dtype)
        # compiled layer by layer, the row count and span vary on the layers' inputs
        rows = (0,) if len(self.sizes) > 1 else ()
        span = (3,) if len(self.spans) > 1 else ()
        hidden = self._hidden(tokens, positions[:, None], mask, rows, (*rows, *span))
        return self.head(hidden[:, -1]).argmax(-1, keepdim=True)

    def _hidden(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        varying: tuple[int, ...],
        mask_varying: tuple[int, ...],
    ) -> torch.Tensor:
        """The decoder's last hidden states, writing the K/V into the cache as it is set up."""
        if self._layerwise is not None:
            return self._layerwise(ids, positions, mask, self._layer_views, varying, mask_varying)
        return self.decoder(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{self._cache_argument: self.cache},
        ).last_hidden_state

    def step(self, rows: int | None = None, span: int | None = None) -> None:
        """The next token of slots 0..rows-1 (all by default), written to `tokens`, attending to
        key columns 0..span-1 (one of `spans`, by default the longest: every position a busy
        row writes must lie below it); their positions advance, kept inside the region (a slot
        without a request steps too)."""
        n = self.slots if rows is None else rows
        tokens, positions = self._rows.get(n) or (self.tokens[:n], self.cache.positions[:n])
        self.cache.key_columns = self._key_columns[self.spans[-1] if span is None else span]
        try:
            tokens.copy_(self._run_decode(self, tokens, positions))
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
            mask = additive_mask((columns[None, None, :] <= positions[:, :, None])[:, None], self.dtype)
            self.cache.prefill_positions, self.cache.prefill_columns = positions, columns
        else:
            positions = offsets[None].repeat(len(prompts), 1)  # not a view: one stride for every prefill
            causal = offsets[None, :] <= offsets[:, None]
            mask = additive_mask(
                causal[None, None] & (offsets[None, :] < lengths[:, None])[:, None, None, :], self.dtype
            )
        self.cache.prefill_rows = rows
        if self._compiled:
            self._mark_prefill_dynamic(ids, positions, mask, lengths)
        try:
            first = self._run_prefill(self, ids, positions, mask, lengths)
        finally:
            self.cache.prefill_rows = self.cache.prefill_positions = self.cache.prefill_columns = None
        self.tokens[rows, 0] = first
        self.cache.positions[rows] = torch.tensor([len(p) for p in prompts], device=self.device)
        return first

    def _prefill(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The prompts' K/V into the cache rows set on it; the first token of each [rows]."""
        hidden = self._hidden(ids, positions, mask, (0, 1), (0, 2, 3))
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
