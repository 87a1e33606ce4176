"""Search strategy: a refused GGUF reference names a way out that is not the setting already in
force; an explicit best-bound order that has no bound to go by says so; Optuna in a space of
several backends asks for one backend's settings at a time."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import OptunaConfig, QualityConfig, SearchConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.results import CandidateResult
from optimizer.search import plan
from optimizer.search.optuna_sampler import OptunaSampler
from optimizer.search.samplers import BoundSampler, RandomSampler, make_sampler
from optimizer.space import Candidate
from unit.factories import (
    SMOLLM2_SHAPE,
    candidate_result,
    performance_result,
    quality_result,
    torch_candidate,
)
from unit.search.test_plan import fake_setup, planned_setup


def test_a_gguf_reference_too_big_for_the_machine_is_not_told_to_use_a_gguf_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    setup = planned_setup(fake_setup(tmp_path), "gguf")
    setup.model.shape = replace(SMOLLM2_SHAPE, num_parameters=10**14)
    cfg = compose_run_config(["workload=batch", "space=cpu-llamacpp", "quality.reference=gguf"])
    with pytest.raises(UserError) as info:
        plan.plan_search(cfg, setup)
    assert info.value.field == "quality.reference"
    assert info.value.problem.startswith("the GGUF as shipped (llama.cpp) reference of this")  # not "the the"
    assert "quality.reference=gguf" not in info.value.fix  # already in force: no way out
    assert "more memory" in info.value.fix and "smaller quantization of the GGUF" in info.value.fix


def test_an_explicit_bound_order_without_a_roofline_says_it_is_random(
    caplog: pytest.LogCaptureFixture,
) -> None:
    candidates = [torch_candidate(batch_size=b) for b in range(1, 31)]
    with caplog.at_level(logging.WARNING, logger="optimizer.search.samplers"):
        sampler = make_sampler(SearchConfig(sampler="bound"), candidates, prior=None)
    assert isinstance(sampler, RandomSampler)
    (record,) = caplog.records
    assert "search.sampler=bound" in record.getMessage() and "search.roofline" in record.getMessage()


@pytest.mark.parametrize("sampler", ["auto", "bound"])
def test_no_word_where_the_order_is_the_one_asked_for(sampler: str, caplog: pytest.LogCaptureFixture) -> None:
    """`auto` documents its random order without a roofline; with a bound, `bound` orders by it."""
    candidates = [torch_candidate(batch_size=b) for b in range(1, 31)]
    with caplog.at_level(logging.WARNING, logger="optimizer.search.samplers"):
        ordered = make_sampler(SearchConfig(sampler=sampler), candidates, prior=lambda c: c.batch_size)
        make_sampler(SearchConfig(sampler="auto"), candidates, prior=None)
    assert isinstance(ordered, BoundSampler)
    assert caplog.records == []


def mixed_space() -> list[Candidate]:
    """The GPU default's kind of space: plain torch beside continuous batching, 72 candidates, every
    one valid."""
    space = []
    for batch in (1, 2, 4, 8, 16, 32):
        space += [
            Candidate(TorchSettings(precision=p, quantization=q), batch, 0)
            for p in ("fp32", "bf16")
            for q in ("none", "int8-weight")
        ]
        space += [
            Candidate(ContinuousBatchingSettings(precision=p, max_batch_tokens=t, page_size=s), batch, 0)
            for p in ("bf16", "fp16")
            for t in (256, 1024)
            for s in (16, 64)
        ]
    return space


def goodput(candidate: Candidate) -> float:
    """One optimum: continuous batching, bf16, the largest batch, 1024 batch tokens, 16-token pages."""
    s = candidate.settings
    value = candidate.batch_size * (1.5 if s.precision == "bf16" else 1.0)
    if isinstance(s, ContinuousBatchingSettings):
        return (
            value * 1.3 * (1.2 if s.max_batch_tokens == 1024 else 1.0) * (1.1 if s.page_size == 16 else 1.0)
        )
    return value * (0.7 if s.quantization != "none" else 1.0)


def measured(candidate: Candidate) -> CandidateResult:
    return candidate_result(
        candidate=candidate,
        quality=quality_result(mean_kl=0.001),
        performance=performance_result(goodput_tokens_per_joule=goodput(candidate)),
    )


def optuna_config(algorithm: str = "tpe", seed: int = 0) -> SearchConfig:
    return SearchConfig(
        sampler="optuna", seed=seed, optuna=OptunaConfig(algorithm=algorithm, warm_start=False)
    )


def test_tpe_steers_in_a_space_of_two_backends() -> None:
    """Every axis of every backend was one independent categorical: nearly every proposal mixed
    torch's settings with continuous batching's (~120 invalid proposals a search) and TPE found
    the optimum later than a random order would (36.5 of 72 expected)."""
    space = mixed_space()
    best = max(space, key=goodput)
    found_after = []
    for seed in range(4):
        sampler = OptunaSampler(space, optuna_config(seed=seed), QualityConfig())
        count = 0
        while (candidate := sampler.suggest()) is not None and candidate != best:
            count += 1
            sampler.observe(candidate, measured(candidate))
        found_after.append(count + 1)
        assert sampler.invalid_proposals == 0  # a proposal is always one backend's
    assert sum(found_after) / len(found_after) < 24, found_after


@pytest.mark.parametrize("algorithm", ["tpe", "nsga2"])
def test_stored_results_of_two_backends_are_taken_in_then_the_rest_is_suggested_once(algorithm: str) -> None:
    space = mixed_space()
    sampler = OptunaSampler(space, optuna_config(algorithm), QualityConfig())
    stored = space[::5]  # both backends' candidates, as a resumed search reads them
    for candidate in stored:
        sampler.observe(candidate, measured(candidate))
    suggested = []
    while (candidate := sampler.suggest()) is not None:
        suggested.append(candidate)
        sampler.observe(candidate, measured(candidate))
    assert sorted(c.key() for c in [*stored, *suggested]) == sorted(c.key() for c in space)
    assert sampler.invalid_proposals == 0
    for trial in sampler.study.trials:  # each trial is one backend's: its settings, none of the other's
        other = "torch-cb." if trial.params["backend"] == "torch" else "torch."
        assert not any(name.startswith(other) for name in trial.params), trial.params
