"""The slot loop's admission: which waiting requests take the free slots before the next step."""

from __future__ import annotations

import collections

from optimizer.backends.prefixes import PrefixCounts
from optimizer.backends.torch.slot_decoder import PREFILL_WIDTH_MULTIPLE
from optimizer.backends.torch.slot_prefixes import CachedPrefixes
from optimizer.backends.torch.slot_requests import Admission, SlotRequest


def admit(
    waiting: collections.deque[SlotRequest],
    free: list[int],
    prefixes: CachedPrefixes | None,
    counts: PrefixCounts,
    max_prefill_tokens: int,
) -> list[Admission]:
    """Waiting requests (taken off `waiting`) for the `free` slots, first come first served,
    within the prefill budget (padded prompt tokens to compute: a cached prefix is not). With
    prefix sharing each admitted prompt is counted in `counts` and its cached prefix marked used."""
    admitted: list[Admission] = []
    longest = 0
    while waiting and len(admitted) < len(free):
        prompt = waiting[0].prompt_ids
        source, cached = prefixes.match(prompt) if prefixes is not None else (-1, 0)
        longest = max(longest, len(prompt) - cached)
        width = -(-longest // PREFILL_WIDTH_MULTIPLE) * PREFILL_WIDTH_MULTIPLE
        if admitted and width * (len(admitted) + 1) > max_prefill_tokens:
            break
        if prefixes is not None:
            counts.count(len(prompt), cached)
            if cached:
                prefixes.used(source)
        admitted.append(Admission(free[len(admitted)], waiting.popleft(), source, cached))
    return admitted
