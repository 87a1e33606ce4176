"""Config validation: a group given a mapping (`space={...}`), a null entry of a list setting, a
negative workload.seed, and the user's GPU preset read apart from the run's other settings."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from optimizer.config import WorkloadConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.target import detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target_user_preset import h100  # noqa: F401 (a fixture)


def _error(overrides: list[str], config_dir: Path | None = None) -> UserError:
    with pytest.raises(UserError) as caught:
        compose_run_config(overrides, config_dir)
    return caught.value


# 1. `space={...}`: Hydra merged it into the default preset (cpu-default, even on a GPU target,
# where the mapping had made `space` a choice and so kept gpu-default out)


def test_a_group_given_a_mapping_is_refused_with_the_overrides_that_set_its_fields() -> None:
    error = _error(["space={backends: [torch], torch: {precisions: [bf16]}}"])
    assert error.field == "space"
    assert "is a mapping" in error.problem and "one preset name" in error.problem
    assert "space.backends=[torch] space.torch.precisions=[bf16]" in error.fix
    assert "cpu-default" in error.fix  # the presets it could name instead
    # the overrides it suggests compose to what the mapping meant
    space = compose_run_config(["space.backends=[torch]", "space.torch.precisions=[bf16]"]).space
    assert space.backends == ["torch"] and space.torch.precisions == ["bf16"]


@pytest.mark.parametrize(
    ("override", "field", "suggested"),
    [
        ("space={}", "space", "space.<field>=value"),
        ("model={source: /models/x}", "model", "model.source=/models/x"),
        ("target={kind: cuda}", "target", "target.kind=cuda"),
        ("workload={name: 'a b'}", "workload", "workload.name='a b'"),
    ],
)
def test_every_group_refuses_a_mapping(override: str, field: str, suggested: str) -> None:
    error = _error([override])
    assert error.field == field and "is a mapping" in error.problem
    assert suggested in error.fix


# 2. `space.batch_sizes=[null]` read "is a group of settings (int), not a single value"


def test_a_null_batch_size_names_the_field_and_what_a_batch_size_is() -> None:
    error = _error(["space.batch_sizes=[null]"])
    assert error.field == "space.batch_sizes"
    assert error.problem == "has a null entry: a batch size is a positive integer"
    assert "group of settings" not in str(error)
    assert "space.batch_sizes=[" in error.fix
    assert _error(["space.batch_sizes=[8,null]"]).field == "space.batch_sizes"


def test_a_null_entry_of_another_list_names_its_type() -> None:
    error = _error(["space.threads=[null]"])
    assert (error.field, error.problem) == ("space.threads", "has a null entry: each entry is an integer")
    error = _error(["space.torch.precisions=[null]"])
    assert (error.field, error.problem) == (
        "space.torch.precisions",
        "has a null entry: each entry is a string",
    )


def test_a_null_entry_in_a_preset_names_the_field_and_the_preset(tmp_path: Path) -> None:
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "mine.yaml").write_text("backends: [torch]\nbatch_sizes: [null]\n")
    error = _error(["space=mine"], tmp_path)
    assert error.field == "space.batch_sizes"
    assert error.problem == "has a null entry (in the preset space/mine): a batch size is a positive integer"


# 3. a negative workload.seed drew as its absolute value


def test_the_stream_draws_a_negative_seed_as_its_absolute_value() -> None:
    """Why it is refused: the stream's generators (measure/stream.py) are random.Random(seed)."""
    assert random.Random(-3).random() == random.Random(3).random()


@pytest.mark.parametrize("workload", ["chat", "batch"])
def test_a_negative_seed_is_refused(workload: str) -> None:
    error = _error([f"workload={workload}", "workload.seed=-3"])
    assert error.field == "workload.seed" and "-3" in error.problem and ">= 0" in error.problem
    assert compose_run_config([f"workload={workload}", "workload.seed=3"]).workload.seed == 3
    with pytest.raises(UserError, match=r"workload\.seed"):
        WorkloadConfig(seed=-1)


# 4. the user's GPU preset was composed with every default preset and WATTSMITH_CACHE, without
# the run's overrides


def _user_dir(tmp_path: Path) -> Path:
    """An H100 preset of the user's, and a broken workload/chat.yaml (conf/config.yaml's default)
    that the run does not use: it takes workload=mine."""
    for group in ("target", "workload"):
        (tmp_path / group).mkdir(parents=True)
    (tmp_path / "target" / "h100.yaml").write_text(
        "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 2000\n"
    )
    (tmp_path / "workload" / "chat.yaml").write_text("kind: serving\nrate: [\n")
    (tmp_path / "workload" / "mine.yaml").write_text("kind: serving\nrate: 3\n")
    return tmp_path


def _figures(overrides: list[str], config_dir: Path) -> tuple[float | None, float | None]:
    spec = detect_target(compose_for_target(overrides, config_dir).target)
    return spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops


@pytest.mark.usefixtures("h100")
def test_the_users_gpu_preset_does_not_read_a_default_preset_the_run_replaced(tmp_path: Path) -> None:
    assert _figures(["workload=mine"], _user_dir(tmp_path)) == (2000, 989)


@pytest.mark.usefixtures("h100")
def test_the_users_gpu_preset_with_an_empty_cache_variable_and_cache_dir_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", "")
    config_dir = _user_dir(tmp_path / "conf")
    cfg = compose_for_target(["workload=mine", f"cache_dir={tmp_path / 'cache'}"], config_dir)
    assert cfg.cache_dir == str(tmp_path / "cache")
    assert (cfg.target.memory_bandwidth_gb_per_s, detect_target(cfg.target).peak_bf16_tflops) == (2000, 989)
    # without cache_dir the empty variable is still named
    with pytest.raises(UserError, match="WATTSMITH_CACHE"):
        compose_for_target(["workload=mine"], config_dir)


@pytest.mark.usefixtures("h100")
def test_an_invalid_user_gpu_preset_is_still_named(tmp_path: Path) -> None:
    config_dir = _user_dir(tmp_path)
    (config_dir / "target" / "h100.yaml").write_text(
        "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: abc\n"
    )
    with pytest.raises(UserError, match=r"target\.memory_bandwidth_gb_per_s"):
        compose_for_target(["workload=mine"], config_dir)
