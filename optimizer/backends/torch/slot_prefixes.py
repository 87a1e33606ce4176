"""Prefix reuse for the slot loop: which tokens' K/V each row of the slot cache holds.

The slot cache has a row per slot and, with prefix sharing, as many rows again that no step
touches: the prefix store. A finished request's K/V (its prompt and every output but the last)
is copied into a store row before its slot is reused. A new request's prompt is matched against
every row, running slots included (a system prompt another request is using), and the longest
match is copied into its slot, so that only the rest of the prompt is prefilled. This module is
host bookkeeping only (numpy, no torch): the engine does the copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# A shorter match is prefilled with the rest of the prompt: copying a few columns and widening the
# prefill's key span would cost about what the match saves.
PREFIX_MIN_TOKENS = 16
_EMPTY = -1  # a column no token is cached in


class CachedPrefixes:
    """Rows 0..slots-1 are the slots, rows slots..slots+entries-1 the store; each row holds the
    K/V of a token sequence (or nothing), up to `columns` tokens."""

    def __init__(self, slots: int, entries: int, columns: int) -> None:
        if entries < 1:
            raise ValueError(f"a prefix store needs >= 1 entry, got {entries}")
        self.slots = slots
        self.entries = entries
        self.tokens = np.full((slots + entries, columns), _EMPTY, dtype=np.int64)
        self.lengths = np.zeros(slots + entries, dtype=np.int64)
        self._last_used = np.zeros(entries, dtype=np.int64)  # per store row: a clock, for LRU
        self._clock = 0

    def match(self, prompt: Sequence[int]) -> tuple[int, int]:
        """The row whose tokens share the longest prefix with `prompt`, and that length (at most
        len(prompt) - 1: the last prompt token is prefilled, for the first output's logits);
        (-1, 0) below PREFIX_MIN_TOKENS."""
        width = min(len(prompt) - 1, self.tokens.shape[1])
        if width < PREFIX_MIN_TOKENS:
            return -1, 0
        wanted = np.asarray(prompt[:width], dtype=np.int64)
        # first the rows that hold the prompt's first PREFIX_MIN_TOKENS (usually few or none),
        # then their first mismatch (a row equal throughout matches all `width` tokens)
        rows = np.flatnonzero((self.tokens[:, :PREFIX_MIN_TOKENS] == wanted[:PREFIX_MIN_TOKENS]).all(axis=1))
        if not rows.size:
            return -1, 0
        same = self.tokens[rows, :width] == wanted
        lengths = np.where(same.all(axis=1), width, same.argmin(axis=1))
        best = int(lengths.argmax())
        return int(rows[best]), int(lengths[best])

    def used(self, row: int) -> None:
        """A match in `row` was copied: a store row is kept longer."""
        if row >= self.slots:
            self._touch(row)

    def hold(self, row: int, tokens: Sequence[int]) -> None:
        """Row `row` now holds the K/V of `tokens`."""
        count = min(len(tokens), self.tokens.shape[1])
        self.tokens[row, :count] = tokens[:count]
        self.tokens[row, count:] = _EMPTY
        self.lengths[row] = count

    def release(self, row: int) -> None:
        """Row `row` holds nothing anyone may match (its slot is about to be written)."""
        self.tokens[row] = _EMPTY
        self.lengths[row] = 0

    def move(self, source: int, target: int) -> None:
        """The engine moved slot `source`'s request into slot `target`; `source` is free."""
        self.tokens[target] = self.tokens[source]
        self.lengths[target] = self.lengths[source]
        self.release(source)

    def store_row(self, tokens: Sequence[int]) -> int | None:
        """The store row to copy a finished request's `tokens` into, or None when a store row
        already holds them (or more). A row holding a prefix of them (the conversation's turn
        before) is replaced; else the least recently used one."""
        count = min(len(tokens), self.tokens.shape[1])
        if count < PREFIX_MIN_TOKENS:
            return None
        store = self.tokens[self.slots :]
        lengths = self.lengths[self.slots :]
        equal = store[:, :count] == np.asarray(tokens[:count], dtype=np.int64)
        holds_them = equal.all(axis=1)
        if holds_them.any():
            self._touch(self.slots + int(holds_them.argmax()))
            return None
        # a row whose tokens all come before its first mismatch with `tokens`
        prefix_of = (lengths > 0) & (equal.argmin(axis=1) >= lengths)
        entry = int(prefix_of.argmax()) if prefix_of.any() else int(self._last_used.argmin())
        self._touch(self.slots + entry)
        return self.slots + entry

    def keep(self, slot: int, tokens: Sequence[int], copy: Callable[[int, int, int], None]) -> None:
        """A finished request's `tokens` from `slot` into a store row, if one may take them
        (`copy(slot, row, columns)` moves their K/V); `slot` then holds nothing."""
        row = self.store_row(tokens)
        if row is not None:
            copy(slot, row, min(len(tokens), self.tokens.shape[1]))
            self.hold(row, tokens)
        self.release(slot)

    def forget(self) -> None:
        """Nothing is cached any more (the engine is idle): every row is empty."""
        self.tokens.fill(_EMPTY)
        self.lengths.fill(0)
        self._last_used.fill(0)

    def _touch(self, row: int) -> None:
        self._clock += 1
        self._last_used[row - self.slots] = self._clock
