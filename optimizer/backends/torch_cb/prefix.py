"""Prefix-sharing counters for transformers' paged cache, which reports none of its own."""

from __future__ import annotations

import time
from typing import Any

from optimizer.backends.prefixes import PrefixCounts


class PrefixCounters(PrefixCounts):
    """Counts what prefix sharing found, by wrapping the paged cache's prefix search (transformers
    reports no counters of its own). Prompt tokens are counted at submission."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None
        self._looked_up: set[str] = set()  # transformers searches a waiting request at every schedule

    def attach(self, manager: Any) -> None:
        """Wrap the manager's cache once its loop thread has made it."""
        deadline = time.monotonic() + 10.0
        while (cache_ := getattr(getattr(manager, "batch_processor", None), "cache", None)) is None:
            if time.monotonic() > deadline or not manager.is_running():
                return
            time.sleep(0.01)
        if cache_ is self._cache:
            return
        self._cache = cache_
        # a new manager numbers its requests from req_0 again: the last one's ids were each
        # counted already, and a repeated run of a stream looked up nothing
        looked_up: set[str] = set()
        self._looked_up = looked_up
        search = cache_.search_prefix_match

        def counted(request_id: str, prompt_ids: list[int]) -> int:
            matched = int(search(request_id, prompt_ids))
            if request_id not in looked_up:  # one lookup per request (a hit admits it)
                looked_up.add(request_id)
                self.lookups += 1
            self.hits += matched > 0
            self.reused_prompt_tokens += matched
            return matched

        cache_.search_prefix_match = counted
