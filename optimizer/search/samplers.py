"""Samplers decide which candidate to measure next (ask/tell)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from optimizer.config import SearchConfig
from optimizer.results import CandidateResult
from optimizer.space import Candidate


class Sampler(Protocol):
    def suggest(self) -> Candidate | None:
        """The next candidate to evaluate, or None when the sampler has nothing left."""
        ...

    def observe(self, candidate: Candidate, result: CandidateResult) -> None: ...


class GridSampler:
    """Every candidate, in the space's order."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self._pending = list(candidates)

    def suggest(self) -> Candidate | None:
        return self._pending.pop(0) if self._pending else None

    def observe(self, candidate: Candidate, result: CandidateResult) -> None:
        return None


class RandomSampler(GridSampler):
    """Every candidate, in a seeded random order: a budget cut then leaves an unbiased sample."""

    def __init__(self, candidates: Sequence[Candidate], seed: int) -> None:
        shuffled = list(candidates)
        random.Random(seed).shuffle(shuffled)
        super().__init__(shuffled)


def make_sampler(cfg: SearchConfig, candidates: Sequence[Candidate]) -> Sampler:
    if cfg.sampler == "random":
        return RandomSampler(candidates, cfg.seed)
    return GridSampler(candidates)
