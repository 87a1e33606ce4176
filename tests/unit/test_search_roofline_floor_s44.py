"""A roofline without an idle floor (workload.idle_seconds 0 leaves the meter's idle at 0 W) still
ranks the candidates: `bound` goes best bound first instead of in a random order."""

from __future__ import annotations

import math
from dataclasses import replace

from optimizer.config import SearchConfig, WorkloadConfig
from optimizer.model import ModelShape
from optimizer.search.roofline import Roofline, RooflineRates
from optimizer.search.samplers import make_sampler

SHAPE = ModelShape(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=100,
    num_parameters=100 * 64 + 1_000_000,
)
RATES = RooflineRates(1e9, 1e12, floor_watts=10.0, cache_bytes=0, source="test")


def test_an_unmeasured_idle_floor_keeps_the_bound_order(make_candidate) -> None:
    candidates = [make_candidate(batch_size=b) for b in (1, 2, 4, 8, 16, 32, 64, 128)]
    for floor in (0.0, math.nan):  # idle not measured; a meter that read no power
        roofline = Roofline(
            SHAPE, WorkloadConfig(prompt_tokens=4, max_new_tokens=2), replace(RATES, floor_watts=floor), False
        )
        bounds = [roofline.bound(c).tokens_per_joule for c in candidates]
        assert all(math.isfinite(b) for b in bounds), bounds
        # the same order a measured floor gives (any positive floor scales every bound alike)
        assert bounds == sorted(bounds)
        sampler = make_sampler(
            SearchConfig(sampler="bound", seed=1),
            candidates,
            prior=lambda c, model=roofline: model.bound(c).tokens_per_joule,
        )
        assert [sampler.suggest() for _ in candidates] == candidates[::-1]
        # still an upper bound: no measurement prunes it (a device draws far more than the stand-in floor)
        assert min(bounds) > 1e6
