"""A continuous batch over llama.cpp's sequence ids: pure scheduling, no llama.cpp.

Each active request holds one sequence id (a slot). Every step builds one batch: first the last
token of every decoding request (one output each), then as many prompt tokens of prefilling
requests as the batch has room for (a long prompt is split over steps; only its last token is an
output). Waiting requests are admitted into free slots before every step, so a request joins the
running batch as soon as one leaves it.

With prefix reuse (llama.cpp server's prompt cache, per sequence id) a finished request's cells
stay in its slot; a new request takes the free slot whose cached tokens share the longest prefix
with its prompt, keeps those cells and prefills only the rest (at least its last prompt token,
whose logits give the first output), or all of it where llama.cpp cannot drop the rest of the
cells (a recurrent state holds only its last position). Where a running request's cells share a
longer prefix (a system prompt in use by another conversation), they are copied into a free slot
instead (`copy`, llama.cpp's sequence copy), when that saves at least COPY_MIN_TOKENS more.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from optimizer.backends.prefixes import PrefixCounts, common_prefix_length

# A copy moves every cell of the source sequence (a cross-stream sequence copy is whole), so it
# must save more prefill than a few tokens: a guess at the break-even, not a measured one.
COPY_MIN_TOKENS = 32

# decode(tokens, positions, sequence ids, outputs) -> logits [outputs, vocab]
Decode = Callable[[Sequence[int], Sequence[int], Sequence[int], Sequence[bool]], np.ndarray]


@dataclass
class Request:
    request_id: str
    prompt: tuple[int, ...]
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    slot: int = -1
    fed: int = 0  # prompt tokens already in the slot's cache

    @property
    def done(self) -> bool:
        return len(self.tokens) >= self.max_new_tokens

    @property
    def cells(self) -> tuple[int, ...]:
        """The tokens whose cells the request's sequence holds: its prompt fed so far, then every
        output but the last (which the next step feeds)."""
        if self.fed < len(self.prompt):
            return self.prompt[: self.fed]
        return self.prompt + tuple(self.tokens[:-1])


class Slots:
    """The scheduler's state: requests waiting, those holding a slot, and (with prefix reuse) the
    tokens whose cells each free slot still holds."""

    def __init__(self, slots: int, batch_tokens: int, reuse_prefix: bool = False) -> None:
        if slots < 1 or batch_tokens < 1:
            raise ValueError(f"need >= 1 slot and batch token, got {slots} and {batch_tokens}")
        if slots > batch_tokens:  # a step holds one token of every decoding slot
            raise ValueError(f"{slots} slots cannot decode in a batch of {batch_tokens} tokens (n_batch)")
        self.slots = slots
        self.batch_tokens = batch_tokens
        self.reuse_prefix = reuse_prefix
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: dict[int, Request] = {}
        self.cached: dict[int, tuple[int, ...]] = {}
        self.prefix = PrefixCounts()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def admit(
        self, trim: Callable[[int, int], bool | None], copy: Callable[[int, int], None] | None = None
    ) -> None:
        """Move waiting requests into free slots; `trim(slot, keep)` drops the slot's cells from
        position `keep` on (0: all of them) before the request uses it, and returns False when it
        could not keep those `keep` (a recurrent state cannot be cut short) but dropped them all:
        the request then prefills from position 0. `copy(source, slot)` (with prefix reuse)
        replaces the slot's cells with a running request's, before the trim."""
        free = [slot for slot in range(self.slots) if slot not in self.active]
        running = {slot: r.cells for slot, r in self.active.items()}  # not those admitted below
        while self.waiting and free:
            request = self.waiting.popleft()
            slot, keep = free[0], 0
            if self.reuse_prefix:
                slot, keep = self._reuse(request.prompt, free, running, copy)
            free.remove(slot)
            self.cached.pop(slot, None)
            if trim(slot, keep) is False:
                keep = 0
            if self.reuse_prefix:
                self.prefix.count(len(request.prompt), keep)  # what was reused, not what matched
            request.slot, request.fed = slot, keep
            self.active[slot] = request

    def _reuse(
        self,
        prompt: tuple[int, ...],
        free: list[int],
        running: dict[int, tuple[int, ...]],
        copy: Callable[[int, int], None] | None,
    ) -> tuple[int, int]:
        """The free slot for `prompt` and how many of its cells to keep: the free slot with the
        longest cached prefix, or a running request's cells copied into the emptiest free slot."""
        most = len(prompt) - 1  # the last prompt token is fed for the first output's logits
        slot = max(free, key=lambda s: common_prefix_length(self.cached.get(s, ()), prompt))
        keep = min(common_prefix_length(self.cached.get(slot, ()), prompt), most)
        if copy is not None and running:
            source = max(running, key=lambda s: common_prefix_length(running[s], prompt))
            shared = min(common_prefix_length(running[source], prompt), most)
            if shared >= keep + COPY_MIN_TOKENS:
                slot = min(free, key=lambda s: len(self.cached.get(s, ())))
                copy(source, slot)
                keep = shared
        return slot, keep

    def step(self, decode: Decode, clock: Callable[[], float]) -> list[Request]:
        """One batch through `decode`; returns the requests that finished (their slots are free)."""
        tokens: list[int] = []
        positions: list[int] = []
        sequences: list[int] = []
        outputs: list[bool] = []
        owners: list[Request] = []  # the request of every output, in batch order
        feeds: list[tuple[Request, int]] = []
        for slot, r in sorted(self.active.items()):
            if r.fed == len(r.prompt) and r.tokens:
                tokens.append(r.tokens[-1])
                positions.append(len(r.prompt) + len(r.tokens) - 1)
                sequences.append(slot)
                outputs.append(True)
                owners.append(r)
        room = self.batch_tokens - len(tokens)
        for slot, r in sorted(self.active.items()):
            if room <= 0:
                break
            if r.fed < len(r.prompt):
                take = min(room, len(r.prompt) - r.fed)
                end = r.fed + take
                tokens.extend(r.prompt[r.fed : end])
                positions.extend(range(r.fed, end))
                sequences.extend([slot] * take)
                outputs.extend([False] * (take - 1) + [end == len(r.prompt)])
                if end == len(r.prompt):
                    owners.append(r)
                feeds.append((r, end))
                room -= take
        if not tokens:
            return []
        logits = decode(tokens, positions, sequences, outputs)
        next_tokens = logits.argmax(axis=1).tolist() if len(owners) else []
        now = clock()
        for r, end in feeds:
            r.fed = end
        finished = []
        for r, token in zip(owners, next_tokens, strict=True):
            r.tokens.append(int(token))
            r.times.append(now)
            if r.done:
                finished.append(r)
                del self.active[r.slot]
                if self.reuse_prefix:
                    self.cached[r.slot] = r.cells
        return finished

    def drop_all(self) -> list[Request]:
        """Forget every request, waiting or active, and what the slots hold; returns the requests."""
        dropped = [*self.waiting, *self.active.values()]
        self.waiting.clear()
        self.active.clear()
        self.cached.clear()
        return dropped
