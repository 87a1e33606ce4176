"""The slot loop's records of a request and of its admission, the region size it needs, and the
table of what the running requests have produced."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from optimizer.measure.serving import Completion

DEFAULT_MAX_SEQUENCE_TOKENS = 256  # the least prompt + new tokens a slot is built for
SEQUENCE_TOKENS_STEP = 256  # a region grows in these steps, so that a stream rebuilds it rarely


@dataclass
class SlotRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def sequence_tokens(self) -> int:
        return len(self.prompt_ids) + self.max_new_tokens

    def completion(self, error: str | None = None) -> Completion:
        return Completion(self.request_id, tuple(self.tokens), tuple(self.times), error)


@dataclass(frozen=True)
class Admission:
    """A waiting request given a free slot; with prefix reuse, where its prompt's prefix is."""

    slot: int
    request: SlotRequest
    source: int = -1  # the cache row whose first `cached` columns hold a prefix of the prompt
    cached: int = 0


def slot_size(tokens: int) -> int:
    """The region for requests of `tokens` (prompt + new): a multiple of the growth step, and
    never below the default."""
    return max(DEFAULT_MAX_SEQUENCE_TOKENS, -(-tokens // SEQUENCE_TOKENS_STEP) * SEQUENCE_TOKENS_STEP)


def check_request(prompt_ids: Sequence[int], max_new_tokens: int, vocab: int) -> None:
    """Refuse a request the loop cannot serve, at submit: an id outside the embedding failed the
    whole prefill (every request admitted with it, and on CUDA the process's context)."""
    if max_new_tokens < 1 or not prompt_ids:
        raise ValueError(
            f"a request needs a prompt and max_new_tokens >= 1, got {len(prompt_ids)}, {max_new_tokens}"
        )
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {vocab}")


class SlotTable:
    """What each slot's request has produced, in arrays: a step's tokens are recorded for every
    busy slot at once. Appending to each request's lists in a Python loop cost a median 72 us a
    step at 256 slots on this project's CPU (16 us in arrays): host time a captured GPU step waits for
    (evals/slot_host.py). A request's tokens and times reach its lists (`fill`) when it leaves."""

    def __init__(self, slots: int) -> None:
        self.produced = np.zeros(slots, dtype=np.int64)
        self.wanted = np.zeros(slots, dtype=np.int64)
        self.prompt = np.zeros(slots, dtype=np.int64)
        self.tokens = np.zeros((slots, 0), dtype=np.int64)
        self.times = np.zeros((slots, 0), dtype=np.float64)
        self.front = np.arange(slots)  # slots 0..busy-1, as an index

    def admit(self, slot: int, request: SlotRequest) -> None:
        if request.max_new_tokens > self.tokens.shape[1]:  # widened for the longest answer asked
            grow = ((0, 0), (0, request.max_new_tokens - self.tokens.shape[1]))
            self.tokens, self.times = np.pad(self.tokens, grow), np.pad(self.times, grow)
        self.produced[slot] = 0
        self.wanted[slot] = request.max_new_tokens
        self.prompt[slot] = len(request.prompt_ids)

    def record(self, slots: np.ndarray, tokens: Sequence[int] | np.ndarray, now: float) -> np.ndarray:
        """Each slot's next token, stamped `now`; returns the slots whose requests are complete."""
        count = self.produced[slots]
        self.tokens[slots, count] = tokens
        self.times[slots, count] = now
        self.produced[slots] = count + 1
        return slots[count + 1 >= self.wanted[slots]]

    def columns(self, busy: int) -> int:
        """The key columns slots 0..busy-1 have written or write in their next step."""
        return int((self.prompt[:busy] + self.produced[:busy]).max())

    def move(self, source: int, target: int) -> None:
        for array in (self.produced, self.wanted, self.prompt, self.tokens, self.times):
            array[target] = array[source]

    def first_times(
        self, running: dict[int, SlotRequest], waiting: Iterable[SlotRequest]
    ) -> dict[str, float | None]:
        """`ServingEngine.first_token_times`: each running request's first token time, None for
        the waiting ones and for one whose prefill has not returned."""
        told: dict[str, float | None] = {r.request_id: None for r in waiting}
        for slot, request in running.items():
            told[request.request_id] = float(self.times[slot, 0]) if self.produced[slot] else None
        return told

    def fill(self, slot: int, request: SlotRequest) -> SlotRequest:
        """The slot's tokens and times so far into the request's lists."""
        count = int(self.produced[slot])
        request.tokens = self.tokens[slot, :count].tolist()
        request.times = self.times[slot, :count].tolist()
        return request
