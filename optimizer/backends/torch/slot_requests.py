"""The slot loop's records of a request and of its admission, and the region size it needs."""

from __future__ import annotations

from dataclasses import dataclass, field

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
