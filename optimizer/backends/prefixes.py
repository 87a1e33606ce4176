"""What the serving engines that reuse prompt prefixes count, and how they match token sequences.
No runtime imports: the llama.cpp scheduler and the torch slot loop share it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# why a prefix-sharing candidate is not measured on an offline workload
OFFLINE_REASON = "prefix sharing would skip the prefill of the offline pool's repeated prompts: serving only"


@dataclass
class PrefixCounts:
    """What prefix reuse found, in the keys of the report's prefix table."""

    prompt_tokens: int = 0
    lookups: int = 0
    hits: int = 0
    reused_prompt_tokens: int = 0

    def count(self, prompt_tokens: int, reused: int) -> None:
        """One lookup for a prompt of `prompt_tokens`, of which `reused` were found cached."""
        self.prompt_tokens += prompt_tokens
        self.lookups += 1
        self.hits += reused > 0
        self.reused_prompt_tokens += reused

    def as_dict(self) -> dict[str, float]:
        saved = self.reused_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {
            "prompt_tokens": float(self.prompt_tokens),
            "lookups": float(self.lookups),
            "hits": float(self.hits),
            "reused_prompt_tokens": float(self.reused_prompt_tokens),
            "prefill_saved_fraction": saved,
        }


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
