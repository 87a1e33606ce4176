"""NSGA-II's populations hold candidates only (invalid proposals do not fill generations; TPE
still learns them as infeasible); a group set to null names the group and its presets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from optimizer.cli import main
from optimizer.config import OptunaConfig, QualityConfig, SearchConfig, compose_run_config
from optimizer.config.presets import GROUPS, group_options
from optimizer.errors import UserError
from optimizer.search.optuna_sampler import OptunaSampler


@pytest.fixture
def sparse(make_candidate) -> tuple[list, list]:
    """{fp32, bf16} x {none, int8-weight} x batch {1..32}: 24 combinations, 7 of them valid."""
    space = [
        make_candidate(batch_size=b, precision=p, quantization=q)
        for p in ("fp32", "bf16")
        for q in ("none", "int8-weight")
        for b in (1, 2, 4, 8, 16, 32)
    ]
    valid = [
        c
        for c in space
        if c.settings.quantization == "none" and (c.settings.precision == "fp32" or c.batch_size == 1)
    ]
    return space, valid


def drain(sampler: OptunaSampler, make_result, make_quality, make_performance) -> list:
    seen = []
    while (candidate := sampler.suggest()) is not None:
        seen.append(candidate)
        result = make_result(
            candidate=candidate,
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=float(candidate.batch_size)),
        )
        sampler.observe(candidate, result)
    return seen


def search(algorithm: str, seed: int = 0) -> SearchConfig:
    optuna = OptunaConfig(algorithm=algorithm, population_size=4, startup_trials=2, max_proposals=16)
    return SearchConfig(sampler="optuna", seed=seed, optuna=optuna)


@pytest.mark.parametrize("seed", range(3))
def test_nsga2_generations_are_filled_by_candidates_only(
    sparse, make_result, make_quality, make_performance, seed: int
) -> None:
    _, valid = sparse
    sampler = OptunaSampler(valid, search("nsga2", seed), QualityConfig())
    seen = drain(sampler, make_result, make_quality, make_performance)
    assert sorted(c.key() for c in seen) == sorted(c.key() for c in valid)
    assert sampler.invalid_proposals > 0  # the space invites them: 17 of 24 combinations
    key = sampler.study.sampler._get_generation_key()
    complete = [t for t in sampler.study.trials if t.state == TrialState.COMPLETE]
    assert all(t.constraints["valid"] <= 0 for t in complete)  # no invalid proposal in a population
    sizes = Counter(t.system_attrs[key] for t in complete)
    assert sorted(sizes.items()) == [(0, 4), (1, 3)]  # 7 candidates: one full generation, then 3
    invalid = [t for t in sampler.study.trials if sampler._key(t.params) not in sampler._by_params]
    assert len(invalid) == sampler.invalid_proposals
    assert all(t.state == TrialState.FAIL for t in invalid)


def test_a_resumed_nsga2_search_places_its_results_as_the_uninterrupted_one(
    sparse, make_result, make_quality, make_performance
) -> None:
    """The store holds candidates' results only: invalid proposals in the populations shifted the
    uninterrupted run's generations away from those a resumed run rebuilds."""
    _, valid = sparse
    uninterrupted = OptunaSampler(valid, search("nsga2"), QualityConfig())
    measured = drain(uninterrupted, make_result, make_quality, make_performance)
    resumed = OptunaSampler(valid, search("nsga2"), QualityConfig())
    for candidate in measured:
        result = make_result(
            candidate=candidate,
            quality=make_quality(mean_kl=0.001),
            performance=make_performance(goodput_tokens_per_joule=float(candidate.batch_size)),
        )
        resumed.observe(candidate, result)
    key = uninterrupted.study.sampler._get_generation_key()

    def generations(sampler: OptunaSampler) -> dict[str, int]:
        complete = [t for t in sampler.study.trials if t.state == TrialState.COMPLETE]
        return {str(t.params): t.system_attrs[key] for t in complete}

    assert generations(uninterrupted) == generations(resumed)


def test_tpe_still_learns_invalid_proposals_as_infeasible(
    sparse, make_result, make_quality, make_performance
) -> None:
    _, valid = sparse
    sampler = OptunaSampler(valid, search("tpe"), QualityConfig())
    drain(sampler, make_result, make_quality, make_performance)
    invalid = [t for t in sampler.study.trials if sampler._key(t.params) not in sampler._by_params]
    assert len(invalid) == sampler.invalid_proposals > 0
    assert all(t.state == TrialState.COMPLETE and t.constraints["valid"] > 0 for t in invalid)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("null", ["null", "NULL"])
def test_a_null_group_names_the_group_and_its_presets(group: str, null: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([f"{group}={null}"])
    assert (info.value.field, info.value.problem) == (group, "is null: it needs a preset name")
    assert info.value.fix.startswith(f"use one of {group_options(group)}")
    assert ("model=/path/to/hf-dir" in info.value.fix) == (group == "model")


def test_a_null_group_lists_the_users_presets_too(tmp_path: Path) -> None:
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "mine.yaml").write_text("{}\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["space=null"], config_dir=tmp_path)
    assert "'mine'" in info.value.fix and f"yours in {tmp_path}" in info.value.fix


def test_the_cli_says_so_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space=null", "--show-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: space: is null: it needs a preset name\n  fix: use one of [")
    assert "gpu-default" in err and "NoneType" not in err
