"""Four small config and output-directory defects: an empty WATTSMITH_CACHE named as such, no empty
output directory left by an early failure, a directory of its own for each run of the Python API
too, and a grid carbon intensity given in kg/kWh refused."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer import cli, pipeline
from optimizer.config import AccountingConfig, RunConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.recipe import default_cache_dir


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


# 1. WATTSMITH_CACHE set but empty


def test_an_empty_wattsmith_cache_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", "")
    with pytest.raises(UserError) as info:
        compose_run_config(["target=cpu"])
    assert info.value.field == "WATTSMITH_CACHE"
    assert "empty" in info.value.problem
    assert "unset WATTSMITH_CACHE" in info.value.fix and "cache_dir=" in info.value.fix


def test_an_empty_wattsmith_cache_is_refused_by_verify_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify and load_recipe read it themselves: empty, they cached into the working directory."""
    monkeypatch.setenv("WATTSMITH_CACHE", " ")
    with pytest.raises(UserError) as info:
        default_cache_dir()
    assert info.value.field == "WATTSMITH_CACHE"


def test_wattsmith_cache_set_or_unset_or_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path / "c"))
    assert compose_run_config(["target=cpu"]).cache_dir == str(tmp_path / "c")
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("WATTSMITH_CACHE")
    assert compose_run_config(["target=cpu"]).cache_dir == "~/.cache/wattsmith"
    assert default_cache_dir() == Path("~/.cache/wattsmith").expanduser()
    monkeypatch.setenv("WATTSMITH_CACHE", "")  # the variable is not read: cache_dir is given
    assert compose_run_config(["target=cpu", f"cache_dir={tmp_path}"]).cache_dir == str(tmp_path)


# 2 and 3. The output directory: a run's own, and none left behind by an early failure


@pytest.fixture
def one_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every composition in the same second (the default output_dir's name), in tmp_path."""
    import hydra.core.utils

    class OneSecond(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> OneSecond:
            return cls(2025, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(hydra.core.utils, "datetime", OneSecond)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """The configs optimize() runs with (nothing measured: each run writes one file and returns)."""
    runs: list[RunConfig] = []

    def run(cfg: RunConfig, output_dir: Path) -> pipeline.RunResult:
        runs.append(cfg)
        (output_dir / "report.md").write_text("")
        return pipeline.RunResult(output_dir, None, None, None, [], None)

    monkeypatch.setattr(pipeline, "_optimize", run)
    return runs


SECOND = "outputs/2025-01-02_03-04-05"


def test_python_runs_started_in_one_second_get_a_directory_each(
    one_second: Path, started: list[RunConfig]
) -> None:
    first = pipeline.optimize(compose_run_config(["target=cpu"]))
    second = pipeline.optimize(compose_run_config(["target=cpu"]))
    assert [first.output_dir, second.output_dir] == [Path(SECOND), Path(f"{SECOND}-2")]
    assert [c.output_dir for c in started] == [SECOND, f"{SECOND}-2"]  # config.yaml names its own
    assert all((one_second / d / "report.md").is_file() for d in (SECOND, f"{SECOND}-2"))


def test_a_python_run_writes_into_the_output_dir_given(one_second: Path, started: list[RunConfig]) -> None:
    for _ in range(2):
        result = pipeline.optimize(compose_run_config(["target=cpu", "output_dir=mine"]))
        assert result.output_dir == Path("mine")
    # the caller's own choice, made after composing, is kept as well
    cfg = compose_run_config(["target=cpu"])
    cfg.output_dir = "mine"
    assert pipeline.optimize(cfg).output_dir == Path("mine")


def test_the_config_marks_no_visible_setting(one_second: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What tells the default output_dir apart is no setting: neither printed nor settable."""
    assert cli.main(["--show-config", "target=cpu"]) == 0
    assert "composed" not in capsys.readouterr().out
    with pytest.raises(UserError, match="is not a setting"):
        compose_run_config(["composed_output_dir=x"])


def unwritable_cache(root: Path) -> str:
    (root / "a-file").write_text("")
    return f"cache_dir={root / 'a-file' / 'cache'}"  # under a file: mkdir fails


@pytest.mark.parametrize("output_dir", [None, "runs/exp/one"])
def test_an_early_failure_leaves_no_directory_behind(one_second: Path, output_dir: str | None) -> None:
    given = [f"output_dir={output_dir}"] if output_dir else []
    with pytest.raises(UserError, match="cache_dir"):
        pipeline.optimize(compose_run_config(["target=cpu", unwritable_cache(one_second), *given]))
    assert sorted(p.name for p in one_second.iterdir()) == ["a-file"]


def test_an_early_failure_of_the_command_leaves_no_directory_behind(one_second: Path) -> None:
    assert cli.main(["target=cpu", unwritable_cache(one_second)]) == 2
    assert sorted(p.name for p in one_second.iterdir()) == ["a-file"]


def test_an_early_failure_keeps_an_empty_directory_it_did_not_make(one_second: Path) -> None:
    (one_second / "mine").mkdir()
    with pytest.raises(UserError, match="cache_dir"):
        pipeline.optimize(compose_run_config(["target=cpu", unwritable_cache(one_second), "output_dir=mine"]))
    assert (one_second / "mine").is_dir()


def test_a_failure_after_writing_keeps_the_directory(
    one_second: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails_late(cfg: RunConfig, output_dir: Path) -> pipeline.RunResult:
        (output_dir / "results.jsonl").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_optimize", fails_late)
    with pytest.raises(KeyboardInterrupt):
        pipeline.optimize(compose_run_config(["target=cpu"]))
    assert (one_second / SECOND / "results.jsonl").is_file()


# 4. accounting: a unit slip


@pytest.mark.parametrize("value", [0.4, 0.05, 0.999])
def test_grid_intensity_in_kg_per_kwh_is_refused(value: float) -> None:
    with pytest.raises(UserError) as info:
        AccountingConfig(grid_gco2_per_kwh=value)
    assert info.value.field == "accounting.grid_gco2_per_kwh"
    assert "g/kWh" in info.value.problem
    assert f"{value:g} kg/kWh is {value * 1000:g} g/kWh" in info.value.fix


def test_grid_intensity_in_kg_is_refused_from_the_command_line() -> None:
    with pytest.raises(UserError, match="accounting.grid_gco2_per_kwh"):
        compose_run_config(["target=cpu", "accounting.grid_gco2_per_kwh=0.4"])


@pytest.mark.parametrize("value", [0.0, 1.0, 1.7, 400.0, 1100.0])
def test_plausible_grid_intensities_and_zero_are_accepted(value: float) -> None:
    """0: a carbon-free supply (a roll-up of 0 g); 1.7: Quebec's hydro grid."""
    assert AccountingConfig(grid_gco2_per_kwh=value).grid_gco2_per_kwh == value
