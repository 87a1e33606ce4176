"""Samplers: grid order, seeded random order, exhaustion."""

from __future__ import annotations

from optimizer.config import SearchConfig
from optimizer.search.samplers import GridSampler, RandomSampler, make_sampler


def _drain(sampler) -> list:
    out = []
    while (c := sampler.suggest()) is not None:
        out.append(c)
    return out


def test_grid_keeps_the_order(make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]
    sampler = make_sampler(SearchConfig(sampler="grid"), cands)
    assert isinstance(sampler, GridSampler)
    assert _drain(sampler) == cands
    assert sampler.suggest() is None
    assert cands == [make_candidate(batch_size=b) for b in (1, 2, 4, 8)]  # input not consumed


def test_random_is_a_seeded_permutation(make_candidate) -> None:
    cands = [make_candidate(batch_size=b) for b in range(1, 21)]
    a = _drain(make_sampler(SearchConfig(sampler="random", seed=3), cands))
    b = _drain(make_sampler(SearchConfig(sampler="random", seed=3), cands))
    c = _drain(RandomSampler(cands, seed=4))
    assert a == b
    assert sorted(a, key=lambda x: x.batch_size) == cands
    assert a != cands and a != c


def test_observing_a_result_does_not_change_the_grid_order(make_candidate, make_result) -> None:
    a, b = make_candidate(batch_size=1), make_candidate(batch_size=2)
    sampler = GridSampler([a, b])
    assert sampler.suggest() == a
    # a result for a candidate still pending must neither drop nor reorder it
    sampler.observe(b, make_result(candidate=b))
    assert sampler.suggest() == b
    assert sampler.suggest() is None


def test_bound_goes_best_bound_first_and_auto_picks_by_space_size(make_candidate) -> None:
    from optimizer.search.samplers import AUTO_GRID_MAX_CANDIDATES, BoundSampler

    small = [make_candidate(batch_size=b) for b in (1, 8, 4, 2)]
    prior = lambda c: float(c.batch_size)  # noqa: E731 - the roofline's bound grows with the batch here
    bound = make_sampler(SearchConfig(sampler="bound"), small, prior=prior)
    assert isinstance(bound, BoundSampler)
    assert [bound.suggest().batch_size for _ in small] == [8, 4, 2, 1]  # type: ignore[union-attr]
    assert type(make_sampler(SearchConfig(sampler="auto"), small, prior=prior)) is GridSampler
    large = [make_candidate(batch_size=b) for b in range(1, AUTO_GRID_MAX_CANDIDATES + 2)]
    auto = make_sampler(SearchConfig(sampler="auto"), large, prior=prior)
    assert isinstance(auto, BoundSampler) and auto.suggest().batch_size == len(large)  # type: ignore[union-attr]
    no_roofline = make_sampler(SearchConfig(sampler="auto"), large, prior=None)
    assert isinstance(no_roofline, RandomSampler)
