"""target=auto on a GPU with the user's preset of its name, for a Python caller: compose_run_config
with a config directory, then detect_target, measures with the user's bandwidth and FLOP/s (only
the CLI's compose_for_target read them before). The directory rides on the TargetConfig, never
as a setting: not in the schema, --show-config, a run's config.yaml or equality."""

from __future__ import annotations

import copy
import pickle
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from optimizer import cli
from optimizer.config import TargetConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.target import detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target_user_preset import PCIE, h100  # noqa: F401 (a fixture)


def _user_dir(tmp_path: Path, preset: str = PCIE) -> Path:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "h100.yaml").write_text(preset)
    return tmp_path


def _figures(target: TargetConfig) -> tuple[float | None, float | None]:
    spec = detect_target(target)
    return spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops


@pytest.mark.usefixtures("h100")
def test_a_python_caller_detects_with_the_users_preset(tmp_path: Path) -> None:
    cfg = compose_run_config(["target=auto"], _user_dir(tmp_path))
    assert _figures(cfg.target) == (2000, 756)
    # the CLI's composition measures with the same figures
    assert _figures(compose_for_target(["target=auto"], tmp_path).target) == (2000, 756)


@pytest.mark.usefixtures("h100")
def test_overrides_win_and_what_the_preset_leaves_out_is_packaged(tmp_path: Path) -> None:
    config_dir = _user_dir(tmp_path, "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 2000\n")
    assert _figures(compose_run_config([], config_dir).target) == (2000, 989)
    given = compose_run_config(["target.memory_bandwidth_gb_per_s=1000"], config_dir)
    assert _figures(given.target) == (1000, 989)


@pytest.mark.usefixtures("h100")
def test_without_a_config_dir_or_a_preset_of_that_name_the_packaged_one_fills(tmp_path: Path) -> None:
    assert _figures(compose_run_config(["target=auto"]).target) == (3350, 989)
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "l4.yaml").write_text("kind: cuda\nname: l4\nmemory_bandwidth_gb_per_s: 1\n")
    assert _figures(compose_run_config(["target=auto"], tmp_path).target) == (3350, 989)


@pytest.mark.usefixtures("h100")
def test_an_invalid_user_preset_is_named(tmp_path: Path) -> None:
    config_dir = _user_dir(tmp_path, "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: -1\n")
    target = compose_run_config(["target=cpu"], config_dir).target
    with pytest.raises(UserError, match="target.memory_bandwidth_gb_per_s"):
        detect_target(replace(target, kind="auto", name="auto"))


def test_the_directory_is_no_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_dir = _user_dir(tmp_path)
    target = compose_run_config(["target=cpu"], config_dir).target
    assert target.config_dir == str(config_dir)
    # kept wherever the target travels: to a local GPU's worker (replace), pickled to the others
    moved = replace(target, device_index=1)
    assert moved.config_dir == str(config_dir)
    assert pickle.loads(pickle.dumps(moved)).config_dir == str(config_dir)
    assert copy.deepcopy(moved).config_dir == str(config_dir)
    # never printed, recorded or compared
    assert "config_dir" not in asdict(target)
    assert target == compose_run_config(["target=cpu"]).target
    assert cli.main(["--config-dir", str(config_dir), "--show-config", "target=cpu"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert "config_dir" not in shown["target"]
    with pytest.raises(UserError, match="target.config_dir"):
        compose_run_config([f"target.config_dir={tmp_path}"])


@pytest.mark.usefixtures("h100")
def test_a_worker_without_the_directory_keeps_what_the_config_carries(tmp_path: Path) -> None:
    """A worker on another node may not see the user's directory: the figures the CLI set in the
    config it was sent still hold, the rest is the packaged preset's."""
    cfg = compose_for_target(
        ["target=auto"], _user_dir(tmp_path, "kind: cuda\nname: h100\npeak_bf16_tflops: 756\n")
    )
    elsewhere = replace(cfg.target, config_dir=str(tmp_path / "not-on-this-node"))
    assert _figures(elsewhere) == (3350, 756)
