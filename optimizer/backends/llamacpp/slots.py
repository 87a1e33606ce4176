"""A continuous batch over llama.cpp's sequence ids: pure scheduling, no llama.cpp.

Each active request holds one sequence id (a slot). Every step builds one batch: first the last
token of every decoding request (one output each), then as many prompt tokens of prefilling
requests as the batch has room for (a long prompt is split over steps; only its last token is an
output). Waiting requests are admitted into free slots before every step, so a request joins the
running batch as soon as one leaves it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

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


class Slots:
    """The scheduler's state: requests waiting, and those holding a slot."""

    def __init__(self, slots: int, batch_tokens: int) -> None:
        if slots < 1 or batch_tokens < 1:
            raise ValueError(f"need >= 1 slot and batch token, got {slots} and {batch_tokens}")
        self.slots = slots
        self.batch_tokens = batch_tokens
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: dict[int, Request] = {}

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def admit(self, free_slot: Callable[[int], None]) -> None:
        """Move waiting requests into free slots; `free_slot` clears a slot's cache first."""
        for slot in range(self.slots):
            if not self.waiting:
                return
            if slot not in self.active:
                request = self.waiting.popleft()
                request.slot = slot
                free_slot(slot)
                self.active[slot] = request

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
        return finished

    def drop_all(self) -> list[Request]:
        """Forget every request, waiting or active; returns them."""
        dropped = [*self.waiting, *self.active.values()]
        self.waiting.clear()
        self.active.clear()
        return dropped
