"""Samplers decide which candidate to measure next (ask/tell).

`observe` is also called for results the sampler did not ask for: results found in the store, from
an earlier run or from another worker of this one. A sampler never sees a candidate twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import CandidateResult
from optimizer.space import Candidate

log = logging.getLogger(__name__)


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


class BoundSampler(GridSampler):
    """Best bound first: candidates in descending order of the roofline's tokens/J bound (ties in a
    seeded random order). Together with roofline pruning this is branch and bound: once a
    measured candidate beats every remaining bound, nothing is left to measure."""

    def __init__(
        self, candidates: Sequence[Candidate], prior: Callable[[Candidate], float], seed: int
    ) -> None:
        rng = random.Random(seed)
        keyed = [(prior(c), rng.random(), c) for c in candidates]
        super().__init__([c for _, _, c in sorted(keyed, key=lambda t: (-t[0], t[1]))])


# `auto`: a space this small is measured whole (grid); a larger one best-bound first
AUTO_GRID_MAX_CANDIDATES = 24


def make_sampler(
    cfg: SearchConfig,
    candidates: Sequence[Candidate],
    bound: QualityConfig | None = None,
    prior: Callable[[Candidate], float] | None = None,
) -> Sampler:
    """`prior` ranks candidates before any is measured (the roofline bound); grid and random
    ignore it."""
    if cfg.sampler == "random":
        return RandomSampler(candidates, cfg.seed)
    if cfg.sampler == "auto" and len(candidates) <= AUTO_GRID_MAX_CANDIDATES:
        return GridSampler(candidates)
    if cfg.sampler in ("bound", "auto"):
        if prior is None:  # no roofline for this target: no order to go by
            # asked for by name, it would be read as best bound first (auto's docs say it is random)
            if cfg.sampler == "bound":
                log.warning(
                    "search.sampler=bound has no roofline bound to order by (search.roofline=false, or a "
                    "GPU target without target.memory_bandwidth_gb_per_s and peak_bf16_tflops): candidates "
                    "are drawn in a seeded random order; set search.roofline=true (with those rates on a GPU)"
                )
            return RandomSampler(candidates, cfg.seed)
        return BoundSampler(candidates, prior, cfg.seed)
    if cfg.sampler == "optuna":
        from optimizer.search.optuna_sampler import OptunaSampler  # optuna loads only when used

        return OptunaSampler(candidates, cfg, bound or QualityConfig(), prior)
    return GridSampler(candidates)


def patience_note(cfg: SearchConfig, sampler: Sampler, candidates: int) -> str | None:
    """Why search.patience stops nothing here (a grid), said once: else the user who set it waits
    for a stop that never comes. None when patience is unset, applies, or is the default preset's
    (the user chose nothing to wait for)."""
    if cfg.patience is None or not cfg.patience_chosen or type(sampler) is not GridSampler:
        return None
    grid = (
        f"search.sampler=auto measures a space of {AUTO_GRID_MAX_CANDIDATES} candidates or fewer "
        f"(here {candidates}) whole, as a grid"
        if cfg.sampler == "auto"
        else f"search.sampler={cfg.sampler} measures every candidate"
    )
    return (
        f"search.patience={cfg.patience} stops nothing: {grid}, and patience needs an order that "
        "puts likely winners first; for it to apply use search.sampler=bound (best bound first) or optuna"
    )
