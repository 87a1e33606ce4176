"""The `optimize` command: help, --show-config, exit code 2 on bad input (no measuring here)."""

from __future__ import annotations

import logging

import pytest
import yaml

from optimizer import cli


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_help_lists_groups_and_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "optimize verify RECIPE" in out
    assert "cpu-default" in out and "strict" in out


def test_show_config_prints_the_composed_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--show-config", "quality=strict", "search.budget_minutes=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["quality"]["max_kl"] == pytest.approx(0.01)
    assert cfg["search"]["budget_minutes"] == pytest.approx(3)


@pytest.mark.parametrize(
    ("args", "field"), [(["space=nope"], "space"), (["workload.repeats=0"], "workload.repeats")]
)
def test_bad_input_exits_2_naming_the_field(args, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}: ")
    assert "fix:" in err


def test_verify_of_a_missing_recipe_exits_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "nope.yaml")]) == 2
    assert "error: recipe:" in capsys.readouterr().err


def test_verify_rejects_a_bad_tolerance(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "r.yaml"), "--tolerance", "1.5"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_verify_without_a_recipe_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify"]) == 2
