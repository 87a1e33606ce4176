"""A user's config directory: its presets are searched before the packaged ones, which stay the
fallback; a user preset replaces a packaged one of the same name; bad directories name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.config import (
    CONFIG_DIR_ENV,
    Preset,
    check_config_dir,
    compose_run_config,
    config_dir_from,
    expand_model_shorthand,
    group_options,
    presets,
)
from optimizer.errors import UserError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def user_conf(tmp_path: Path) -> Path:
    """A model repository's conf/: a new workload, a replacement for the packaged default one,
    a model preset and a space."""
    conf = tmp_path / "repo" / "conf"
    write(conf / "workload" / "mine.yaml", "max_new_tokens: 7\n")
    write(conf / "workload" / "chat.yaml", "prompt_tokens: 16\nmax_new_tokens: 9\n")
    write(conf / "model" / "mymodel.yaml", "source: /models/mymodel\n")
    write(conf / "space" / "mymodel.yaml", "batch_sizes: [2, 4]\ntorch:\n  precisions: [bf16]\n")
    return conf


def test_a_user_preset_composes(user_conf: Path) -> None:
    cfg = compose_run_config(["workload=mine"], config_dir=user_conf)
    assert cfg.workload.max_new_tokens == 7
    assert cfg.workload.prompt_tokens == 64  # the schema's default: mine.yaml sets only one field
    assert cfg.space.backends == ["torch-cb"]  # the packaged cpu-default space


def test_a_user_preset_replaces_the_packaged_one_of_the_same_name(user_conf: Path) -> None:
    cfg = compose_run_config([], config_dir=user_conf)  # the defaults list names workload: chat
    assert (cfg.workload.prompt_tokens, cfg.workload.max_new_tokens) == (16, 9)
    assert compose_run_config([]).workload.prompt_tokens == 64  # without the directory: packaged


def test_the_packaged_presets_stay_the_fallback(user_conf: Path) -> None:
    cfg = compose_run_config(["workload=quick", "quality=strict", "space=mymodel"], config_dir=user_conf)
    assert cfg.workload == compose_run_config(["workload=quick"]).workload
    assert cfg.quality.max_kl == pytest.approx(0.01)
    assert (cfg.space.batch_sizes, cfg.space.torch.precisions) == ([2, 4], ["bf16"])


def test_overrides_apply_over_a_user_preset(user_conf: Path) -> None:
    cfg = compose_run_config(["workload=mine", "workload.max_new_tokens=12"], config_dir=user_conf)
    assert cfg.workload.max_new_tokens == 12


def test_a_relative_directory_and_a_path_with_quotes_and_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "it's a [dir], really"
    write(odd / "workload" / "mine.yaml", "max_new_tokens: 5\n")
    assert compose_run_config(["workload=mine"], config_dir=odd).workload.max_new_tokens == 5
    monkeypatch.chdir(tmp_path)
    assert compose_run_config(["workload=mine"], config_dir=odd.name).workload.max_new_tokens == 5


def test_user_presets_are_unknown_without_the_directory(user_conf: Path) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=mine"])
    assert info.value.field == "workload"
    assert "mine" not in info.value.fix


def test_an_unknown_preset_lists_both_sources(user_conf: Path) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=nope"], config_dir=user_conf)
    assert info.value.field == "workload"
    assert "no preset named 'nope'" in info.value.problem
    assert "'mine'" in info.value.fix and "'quick'" in info.value.fix  # the user's and the packaged
    assert str(user_conf) in info.value.fix


def test_the_model_shorthand_knows_user_model_presets(user_conf: Path) -> None:
    assert compose_run_config(["model=mymodel"], config_dir=user_conf).model.source == "/models/mymodel"
    assert compose_run_config(["model=/some/dir"], config_dir=user_conf).model.source == "/some/dir"
    assert compose_run_config(["model=smollm2"], config_dir=user_conf).model.source == "smollm2"
    assert expand_model_shorthand(["model=mymodel"], user_conf) == ["model=mymodel"]
    assert expand_model_shorthand(["model=mymodel"]) == ["model.source=mymodel"]


def test_presets_mark_the_users(user_conf: Path) -> None:
    workload = {p.name: p for p in presets("workload", user_conf)}
    assert workload["mine"] == Preset("mine", user=True, replaces_packaged=False)
    assert workload["chat"] == Preset("chat", user=True, replaces_packaged=True)
    assert workload["quick"] == Preset("quick")
    assert group_options("workload", user_conf) == sorted(workload)
    assert "mine" not in group_options("workload")
    assert group_options("quality", user_conf) == group_options("quality")  # no quality/ folder


def test_a_top_level_config_yaml_is_not_read(user_conf: Path) -> None:
    """The primary config (the defaults list) is always the packaged one."""
    write(user_conf / "config.yaml", "defaults:\n  - workload: mine\nstore_path: elsewhere.db\n")
    cfg = compose_run_config([], config_dir=user_conf)
    assert (cfg.workload.max_new_tokens, cfg.store_path) == (9, "outputs/trials.db")


def test_a_preset_that_is_not_yaml_names_its_group_and_file(user_conf: Path) -> None:
    broken = write(user_conf / "workload" / "broken.yaml", "max_new_tokens: [7\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=broken"], config_dir=user_conf)
    assert info.value.field == "workload"
    assert str(broken) in info.value.problem


def test_a_misspelt_setting_in_a_preset_names_the_setting(user_conf: Path) -> None:
    write(user_conf / "workload" / "typo.yaml", "max_new_token: 7\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=typo"], config_dir=user_conf)
    assert info.value.field == "workload.max_new_token"
    assert "workload/typo" in info.value.problem


def test_a_preset_that_is_a_list_names_its_file(user_conf: Path) -> None:
    write(user_conf / "workload" / "listed.yaml", "- rate: 4\n- rate: 8\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=listed"], config_dir=user_conf)
    assert info.value.field == "workload"
    assert info.value.problem == "the preset workload/listed is a list, not a mapping of settings"


def test_an_invalid_value_in_a_preset_names_the_field(user_conf: Path) -> None:
    write(user_conf / "space" / "bad.yaml", "batch_sizes: [0]\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["space=bad"], config_dir=user_conf)
    assert info.value.field == "space.batch_sizes"


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_a_config_dir_that_is_not_a_directory_names_the_field_and_the_fix(tmp_path: Path, kind: str) -> None:
    path = {"missing": tmp_path / "nope", "file": write(tmp_path / "f.yaml", "a: 1\n"), "empty": " "}[kind]
    for field in ("config_dir", "--config-dir", CONFIG_DIR_ENV):
        with pytest.raises(UserError) as info:
            check_config_dir(path, field)
        assert info.value.field == field
        assert field in info.value.fix
    with pytest.raises(UserError) as info:
        compose_run_config([], config_dir=path)
    assert info.value.field == "config_dir"


def test_the_flag_wins_over_the_environment_variable(user_conf: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    env = {CONFIG_DIR_ENV: str(other)}
    assert config_dir_from(str(user_conf), env) == user_conf
    assert config_dir_from(None, env) == other
    assert config_dir_from(None, {}) is None
    assert config_dir_from(None, {CONFIG_DIR_ENV: ""}) is None  # set but empty: unset


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        config_dir_from(None, {CONFIG_DIR_ENV: str(tmp_path / "nope")})
    assert info.value.field == CONFIG_DIR_ENV
    assert f"unset {CONFIG_DIR_ENV}" in info.value.fix
    # the flag wins even over a broken variable
    assert config_dir_from(str(tmp_path), {CONFIG_DIR_ENV: str(tmp_path / "nope")}) == tmp_path
