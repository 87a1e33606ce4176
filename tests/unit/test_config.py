"""compose_run_config: conf/ defaults, overrides, and one UserError naming the field per mistake."""

from __future__ import annotations

import pytest

from optimizer.config import (
    LauncherConfig,
    ModelConfig,
    OptunaConfig,
    QualityConfig,
    RayConfig,
    RunConfig,
    SearchConfig,
    SloConfig,
    SlurmConfig,
    SpaceConfig,
    TargetConfig,
    WorkloadConfig,
    compose_run_config,
    expand_model_shorthand,
    group_options,
)
from optimizer.errors import UserError


def test_defaults_compose_into_a_run_config() -> None:
    cfg = compose_run_config()
    assert isinstance(cfg, RunConfig)
    assert isinstance(cfg.space, SpaceConfig)
    assert isinstance(cfg.workload.slo, SloConfig)
    assert cfg.model.source == "smollm2"
    assert cfg.target.kind == "auto"
    assert cfg.search.sampler == "auto" and cfg.search.patience == 8
    # the packaged presets are what the defaults list names
    assert cfg.space.torch.precisions == ["fp32", "bf16"]
    assert cfg.quality.max_kl == pytest.approx(0.05)
    assert cfg.workload.slo.tpot_ms == pytest.approx(250.0)


def test_cache_dir_follows_wattsmith_cache(cache_dir) -> None:
    assert compose_run_config().cache_dir == str(cache_dir)


def test_overrides_and_presets_apply() -> None:
    cfg = compose_run_config(["search.budget_minutes=3", "quality=strict"])
    assert cfg.search.budget_minutes == pytest.approx(3.0)
    assert cfg.quality.max_kl == pytest.approx(0.01)
    assert cfg.quality.min_top1_agreement == pytest.approx(0.98)


def test_nested_list_and_null_overrides() -> None:
    cfg = compose_run_config(
        ["space.batch_sizes=[1,2]", "workload.slo.tpot_ms=null", "space.torch.precisions=[fp32]"]
    )
    assert cfg.space.batch_sizes == [1, 2]
    assert cfg.workload.slo.tpot_ms is None
    assert cfg.space.torch.precisions == ["fp32"]


def test_model_path_shorthand_becomes_model_source() -> None:
    cfg = compose_run_config(["model=/some/path"])
    assert cfg.model.source == "/some/path"


def test_model_preset_name_is_not_rewritten() -> None:
    assert expand_model_shorthand(["model=smollm2", "model=/x/y", "quality=strict"]) == [
        "model=smollm2",
        "model.source=/x/y",
        "quality=strict",
    ]


def test_search_and_launcher_presets() -> None:
    tpe = compose_run_config(["search=optuna"])
    assert (tpe.search.sampler, tpe.search.optuna.algorithm, tpe.search.workers) == ("optuna", "tpe", 1)
    assert compose_run_config(["search=nsga2"]).search.optuna.algorithm == "nsga2"
    assert compose_run_config().launcher.kind == "local"
    assert compose_run_config().store_path == "outputs/trials.db"
    ray = compose_run_config(["launcher=ray", "search.workers=4"])
    assert (ray.launcher.kind, ray.launcher.ray.address, ray.search.workers) == ("ray", None, 4)
    slurm = compose_run_config(
        ["launcher=slurm", "launcher.slurm.partition=gpu", "store_path=postgresql://h/db"]
    )
    assert (slurm.launcher.kind, slurm.launcher.slurm.partition, slurm.launcher.slurm.gpus_per_node) == (
        "slurm",
        "gpu",
        1,
    )


def test_group_options_lists_presets() -> None:
    assert {"default", "strict", "relaxed"} <= set(group_options("quality"))
    assert "cpu" in group_options("target")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("space=nope", "space"),
        ("foo.bar=1", "foo.bar"),
        ("workload.repeats=abc", "workload.repeats"),
        ("workload.repeats=0", "workload.repeats"),
        ("quality.max_kl=-1", "quality.max_kl"),
        ("quality.reference=int8", "quality.reference"),
        ("space.torch.precisions=[fp64]", "space.torch.precisions"),
        ("space.baseline.precision=fp64", "space.baseline.precision"),
        ("space.batch_sizes=[0]", "space.batch_sizes"),
        ("target.kind=gpu", "target.kind"),
        ("workload.slo.tpot_ms=0", "workload.slo.tpot_ms"),
        ("workload.disturbed_retries=-1", "workload.disturbed_retries"),
        # inf passes a comparison with 0: an endless idle wait or window, every arrival at 0 s
        ("workload.idle_seconds=inf", "workload.idle_seconds"),
        ("workload.min_window_seconds=inf", "workload.min_window_seconds"),
        ("workload.rate=inf", "workload.rate"),
        ("workload.rates=[1,inf]", "workload.rates"),
        ("accounting.pue=inf", "accounting.pue"),
        # and every other schema's floats: a memory budget of inf crashed, inf watts an estimate
        ("target.memory_gib=inf", "target.memory_gib"),
        ("target.cpu_active_watts_per_core=inf", "target.cpu_active_watts_per_core"),
        ("search.lease_seconds=inf", "search.lease_seconds"),
        ("quality.max_kl=nan", "quality.max_kl"),
        ("workload.slo.tpot_ms=inf", "workload.slo.tpot_ms"),
        ("workload.output_lengths.cv=inf", "workload.output_lengths.cv"),
        ("launcher.ray.cpus_per_worker=inf", "launcher.ray.cpus_per_worker"),
        ("workload.warmup_requests=-1", "workload.warmup_requests"),
        ("workload.drain_requests=-1", "workload.drain_requests"),
        ("target.cpu_active_watts_per_core=0", "target.cpu_active_watts_per_core"),
        ("target.cpu_idle_watts_per_core=-1", "target.cpu_idle_watts_per_core"),
        ("search.workers=0", "search.workers"),
        ("search.optuna.algorithm=cmaes", "search.optuna.algorithm"),
        ("search.roofline_headroom=0.5", "search.roofline_headroom"),
        ("launcher=k8s", "launcher"),
        ("launcher.slurm.cluster=pbs", "launcher.slurm.cluster"),
    ],
)
def test_bad_input_names_the_field(override: str, field: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == field
    assert info.value.fix  # every error says how to fix it


@pytest.mark.parametrize(
    ("override", "field", "problem", "fix"),
    [
        ("space.batch_sizes=foo", "space.batch_sizes", "is a list", "space.batch_sizes=[1,8]"),
        (
            "workload.slo=5",
            "workload.slo",
            "is a group of settings (SloConfig)",
            "workload.slo.<field>=value",
        ),
        ("workload.rate", "workload.rate", "has no value", "workload.rate=VALUE"),
        ("--show-confg", "--show-confg", "is not an option", "--show-config"),
        ("workload.rate=abc", "workload.rate", "could not be converted to Float", "a value of that type"),
    ],
)
def test_a_mistyped_override_says_what_the_setting_wants(
    override: str, field: str, problem: str, fix: str
) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == field
    assert problem in info.value.problem and fix in info.value.fix


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["space=nope"])
    assert "cpu-default" in info.value.fix


def test_malformed_override_is_a_user_error_naming_its_key_and_value() -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["space.batch_sizes=[1,"])
    assert info.value.field == "space.batch_sizes"
    assert "[1," in str(info.value)


def test_override_without_a_key_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:  # not a plain ValueError, and not silently accepted
        compose_run_config(["=3"])
    assert info.value.fix


def test_user_error_is_a_value_error_with_field_problem_fix() -> None:
    error = UserError("a.b", "is wrong", "do this")
    assert isinstance(error, ValueError)
    assert (error.field, error.problem, error.fix) == ("a.b", "is wrong", "do this")
    assert str(error) == "a.b: is wrong\n  fix: do this"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelConfig(source="  "), "model.source"),
        (lambda: TargetConfig(memory_gib=0), "target.memory_gib"),
        (lambda: TargetConfig(energy_source="guess"), "target.energy_source"),
        (lambda: SearchConfig(max_candidates=0), "search.max_candidates"),
        (lambda: SearchConfig(sampler="optuna-ish"), "search.sampler"),
        (lambda: SloConfig(percentile=0), "workload.slo.percentile"),
        (lambda: WorkloadConfig(max_new_tokens=1), "workload.max_new_tokens"),
        (lambda: QualityConfig(min_top1_agreement=1.5), "quality.min_top1_agreement"),
        (lambda: QualityConfig(seq_tokens=4), "quality.seq_tokens"),
        (lambda: SpaceConfig(threads=[-1]), "space.threads"),
        (lambda: RunConfig(store_path=""), "store_path"),
        (lambda: SearchConfig(lease_seconds=1), "search.lease_seconds"),
        (lambda: OptunaConfig(population_size=1), "search.optuna.population_size"),
        (lambda: OptunaConfig(startup_trials=0), "search.optuna.startup_trials"),
        (lambda: LauncherConfig(kind="mpi"), "launcher.kind"),
        (lambda: RayConfig(cpus_per_worker=0), "launcher.ray.cpus_per_worker"),
        (lambda: SlurmConfig(timeout_min=0), "launcher.slurm.timeout_min"),
        (lambda: SearchConfig(seed=-1), "search.seed"),
        (lambda: SearchConfig(seed=2**32), "search.seed"),
        (lambda: TargetConfig(memory_bandwidth_gb_per_s=-1), "target.memory_bandwidth_gb_per_s"),
        (lambda: TargetConfig(peak_bf16_tflops=-3), "target.peak_bf16_tflops"),
        (lambda: TargetConfig(tdp_watts=-5), "target.tdp_watts"),
        (lambda: TargetConfig(tdp_watts=0), "target.tdp_watts"),
    ],
)
def test_dataclasses_validate_themselves(make, field: str) -> None:
    with pytest.raises(UserError) as info:
        make()
    assert info.value.field == field
    assert info.value.fix


def test_an_idle_core_may_be_charged_nothing_a_busy_one_may_not() -> None:
    """The estimate's idle watts may be 0 (charge busy time only); each bound names its own field."""
    assert TargetConfig(cpu_idle_watts_per_core=0).cpu_idle_watts_per_core == 0
    with pytest.raises(UserError) as info:
        TargetConfig(cpu_idle_watts_per_core=-1)
    assert info.value.field == "target.cpu_idle_watts_per_core" and ">= 0" in info.value.problem
    with pytest.raises(UserError) as info:
        TargetConfig(cpu_active_watts_per_core=0)
    assert info.value.field == "target.cpu_active_watts_per_core" and "> 0" in info.value.problem


@pytest.mark.parametrize(
    "override",
    [
        "search.seed=-1",
        "target.memory_bandwidth_gb_per_s=-1",
        "target.peak_bf16_tflops=-3",
        "target.tdp_watts=-5",
    ],
)
def test_out_of_range_numbers_are_refused_while_composing(override: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["search=optuna", override])
    assert info.value.field == override.partition("=")[0]


def test_the_edges_of_the_seed_range_are_accepted() -> None:
    assert SearchConfig(seed=0).seed == 0 and SearchConfig(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.parametrize(
    ("override", "field", "problem", "fix"),
    [
        ("+search.wokers=4", "search.wokers", "is not a setting", "check the spelling"),
        ("++workload.rte=5", "workload.rte", "is not a setting", "check the spelling"),
        ("+search.workers=4", "search.workers", "exists already", "search.workers=4"),
        ("++search.workers=4", "search.workers", "exists already", "search.workers=4"),
        ("+workload=chat", "workload", "exists already", "workload=chat"),
        ("hydra.run.dir=/tmp/elsewhere", "hydra.run.dir", "Hydra's own setting", "output_dir=DIR"),
        ("++hydra.job.chdir=true", "hydra.job.chdir", "Hydra's own setting", "output_dir=DIR"),
        # a group's deletion: Hydra composes the schema's bare defaults (offline batches for workload)
        ("~workload", "workload", "drops the group's preset", "workload=PRESET"),
        ("~search", "search", "drops the group's preset", "search=PRESET"),
    ],
)
def test_additions_and_hydras_settings_are_refused(override: str, field: str, problem: str, fix: str) -> None:
    with pytest.raises(UserError) as info:  # Hydra accepts them; nothing would read them
        compose_run_config([override])
    assert info.value.field == field
    assert problem in info.value.problem and fix in info.value.fix
    if "exists already" in problem:  # the fix works
        compose_run_config([info.value.fix.rpartition(": ")[2]])


def _list_settings(kind: type = RunConfig, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(kind)
    found = []
    for item in dataclasses.fields(kind):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            found += _list_settings(hint, f"{prefix}{item.name}.")  # type: ignore[arg-type]
        elif typing.get_origin(hint) is list:
            found.append(f"{prefix}{item.name}")
    return found


@pytest.mark.parametrize("field", _list_settings())
def test_a_list_setting_given_one_value_gets_an_example_that_composes(field: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([f"{field}=5"])
    assert info.value.field == field
    example = info.value.fix.partition("e.g. ")[2].rpartition(" (")[0].strip("'")
    assert example.startswith(f"{field}=[")
    compose_run_config([example])


def test_the_list_example_fits_the_field() -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["space.backends=torch"])
    assert "space.backends=[torch]" in info.value.fix


@pytest.mark.parametrize(
    ("override", "field", "example"),
    [
        ("search.roofline=maybe", "search.roofline", "search.roofline=true"),
        ("space.torch.compile=[maybe]", "space.torch.compile", "space.torch.compile=[true,false]"),
    ],
)
def test_a_value_that_is_not_a_bool_says_true_or_false(override: str, field: str, example: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == field
    assert "is not a valid bool" in info.value.problem
    assert "true or false" in info.value.fix and example in info.value.fix
    compose_run_config([example])


@pytest.mark.parametrize("override", ["space.extra=[5]", "space.extra=[torch]", "space.extra={a: 1}"])
def test_space_extra_entries_are_mappings_of_settings(override: str) -> None:
    from optimizer.space import Candidate

    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == "space.extra"
    assert "{backend: torch, batch_size: 8}" in info.value.fix
    (entry,) = compose_run_config(["space.extra=[{backend: torch, batch_size: 8}]"]).space.extra
    assert Candidate.from_dict({"threads": 1, **entry}).batch_size == 8  # the keys are real


@pytest.mark.parametrize(
    ("words", "fix"),
    [
        (["verfy", "recipe.yaml"], "optimize verify recipe.yaml"),
        (["verify_"], "optimize verify RECIPE"),
        (["outputs/run/recipe.yaml"], "optimize verify outputs/run/recipe.yaml"),
        (["recipe.yml"], "optimize verify recipe.yml"),
        (["model.gguf"], "model=model.gguf"),
        (["search.workers"], "search.workers=VALUE"),
    ],
)
def test_a_bare_word_gets_the_command_it_was_meant_for(words: list[str], fix: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(words)
    assert info.value.field == words[0]
    assert fix in info.value.fix


def test_a_bare_model_directory_suggests_model(tmp_path) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([str(tmp_path)])
    assert info.value.fix.endswith(f"model={tmp_path}")


@pytest.mark.parametrize("override", ["workload.rate=4", "workload.turns=4", "workload.trace=t.jsonl"])
def test_a_streams_setting_on_closed_batches_is_refused(override: str) -> None:
    """An offline workload reads none of them: each was ignored without a word."""
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=batch", override])
    assert info.value.field == override.partition("=")[0] and "kind=offline" in info.value.problem


@pytest.mark.parametrize(
    ("override", "fix"),
    [
        ("quality.text=/tmp/my,text.txt", "quote it: \"quality.text='/tmp/my,text.txt'\""),
        ("workload=chat,batch", "one preset per run: workload=chat"),
    ],
)
def test_a_comma_outside_quotes_names_its_key_and_a_fix_that_works(override: str, fix: str) -> None:
    """Hydra reads `a,b` as a sweep: the error named `overrides` and suggested --multirun, refused."""
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == override.partition("=")[0] and info.value.fix.startswith(fix)
    assert compose_run_config(["quality.text='/tmp/my,text.txt'"]).quality.text == "/tmp/my,text.txt"
