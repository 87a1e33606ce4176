"""verify's energy-source check across the NVML meter's two readings (the energy counter, polled
power), and its `--cache-dir`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer import cli, verify
from optimizer.recipe import write_recipe
from unit.factories import WEIGHT_SHA, recipe_data, target_spec

NVML_PAIRS = [("nvml-power-poll", "nvml"), ("nvml", "nvml-power-poll")]


class _Stop(Exception):
    pass


def _gpu_recipe(tmp_path: Path, source: str) -> Path:
    data = recipe_data()
    data["target"] = {"kind": "cuda", "name": "h100", "cpu_model": "Test CPU", "cores": 16}
    data["target"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    data["evidence"]["energy"]["source"] = source
    return write_recipe(tmp_path / "recipe.yaml", data)


@pytest.fixture
def gpu_here(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The recipe's H100 here, metered with the source given; prepare_measurement faked (its setup
    hashes the quality text as `text_sha256`), and verify stopped where it would measure."""

    def here(source: str, text_sha256: str = "cd" * 32) -> None:
        target = target_spec(kind="cuda", cores=16)
        monkeypatch.setattr(verify, "detect_target", lambda cfg: target)
        monkeypatch.setattr(verify, "make_meter", lambda t: SimpleNamespace(source=source))
        setup = SimpleNamespace(
            model=SimpleNamespace(weight_sha256=WEIGHT_SHA, shape=None, format="hf-dir"),
            target=target,
            meter=SimpleNamespace(source=source),
            text_sha256=text_sha256,
            stream=None,
            workload=SimpleNamespace(prompts=None),
        )
        monkeypatch.setattr(verify, "prepare_measurement", lambda *a: setup)

        def measuring(*args: Any) -> None:  # every check so far passed: it would measure now
            raise _Stop

        monkeypatch.setattr(verify, "exclusion_reason", measuring)

    return here


@pytest.mark.parametrize(("recorded", "here"), NVML_PAIRS)
def test_a_recipe_of_the_nvml_meters_other_reading_is_measured_here(
    tmp_path: Path, gpu_here: Any, recorded: str, here: str
) -> None:
    """A board whose counter is stuck records nvml-power-poll; a fresh meter there says nvml until
    its first window: verify stopped NOT VERIFIED on the machine that made the recipe."""
    gpu_here(here)
    with pytest.raises(_Stop):
        verify.verify_recipe(_gpu_recipe(tmp_path, recorded))


@pytest.mark.parametrize(("recorded", "here"), NVML_PAIRS)
def test_the_nvml_meters_other_reading_is_labelled_in_the_report(
    tmp_path: Path, gpu_here: Any, recorded: str, here: str
) -> None:
    gpu_here(here, text_sha256="ef" * 32)  # another FAIL after the sources: the report comes back
    report = verify.verify_recipe(_gpu_recipe(tmp_path, recorded))
    source = {c.name: c for c in report.checks}["energy source"]
    assert source.passed and source.recorded == recorded
    assert source.measured.startswith(f"{here} (same NVML meter: ")
    line = next(x for x in report.render().splitlines() if "energy source" in x)
    assert line.startswith("  ok   energy source") and "polled power" in line and "energy counter" in line


@pytest.mark.parametrize(
    ("recorded", "here"),
    [
        ("rapl", "estimate"),
        ("estimate", "rapl"),
        ("nvml", "rapl"),
        ("nvml-power-poll", "estimate"),
        ("nvml", "unavailable: nvml needs an NVIDIA GPU target"),
    ],
)
def test_another_energy_source_still_fails(recorded: str, here: str) -> None:
    check = verify.source_check(recorded, here)
    assert not check.passed and (check.recorded, check.measured) == (recorded, here)


def test_a_rapl_recipe_metered_by_the_estimate_here_is_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = recipe_data()
    data["evidence"]["energy"] |= {"source": "rapl", "is_estimate": False}
    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(cores=2))
    monkeypatch.setattr(verify, "make_meter", lambda t: SimpleNamespace(source="estimate"))
    report = verify.verify_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    source = {c.name: c for c in report.checks}["energy source"]
    assert not report.measured and not source.passed and source.measured == "estimate"


@pytest.fixture
def prepared_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A CPU recipe as the host's, and the cache prepare_measurement is given (then it stops)."""
    caches: list[Path] = []

    def prepare(model_cfg: Any, target_cfg: Any, workload: Any, quality: Any, cache: Path, *a: Any) -> None:
        caches.append(cache)
        raise _Stop

    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(cores=2))
    monkeypatch.setattr(verify, "make_meter", lambda t: SimpleNamespace(source="estimate"))
    monkeypatch.setattr(verify, "prepare_measurement", prepare)
    return write_recipe(tmp_path / "recipe.yaml", recipe_data()), caches


def test_verify_takes_a_cache_dir_before_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cache: tuple[Path, list[Path]]
) -> None:
    recipe, caches = prepared_cache
    monkeypatch.setenv("WATTSMITH_CACHE", "")  # not read when the flag names the cache
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["verify", str(recipe), "--cache-dir", str(tmp_path / "cache")]) == cli.CRASHED  # _Stop
    assert cli.main(["verify", str(recipe), "--cache-dir=~/other"]) == cli.CRASHED  # _Stop
    assert caches == [tmp_path / "cache", tmp_path / "other"]


def test_verify_without_the_flag_reads_the_environments_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cache: tuple[Path, list[Path]]
) -> None:
    recipe, caches = prepared_cache
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path / "env-cache"))
    assert cli.main(["verify", str(recipe)]) == cli.CRASHED  # _Stop
    assert caches == [tmp_path / "env-cache"]


def test_an_empty_cache_variable_names_the_flag_verify_takes(
    monkeypatch: pytest.MonkeyPatch,
    prepared_cache: tuple[Path, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe, caches = prepared_cache
    monkeypatch.setenv("WATTSMITH_CACHE", "")
    assert cli.main(["verify", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "error: WATTSMITH_CACHE: is set but empty" in err and caches == []
    assert "--cache-dir DIR" in err and "does not" not in err and "cache_dir=" not in err


def test_an_empty_cache_dir_flag_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["verify", str(tmp_path / "recipe.yaml"), "--cache-dir", ""]) == 2
    assert "error: --cache-dir: is empty" in capsys.readouterr().err


def test_the_help_shows_verifys_cache_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert (
        "optimize verify RECIPE [--tolerance F] [--model SOURCE] [--cache-dir DIR]" in capsys.readouterr().out
    )
    assert cli.main(["verify", "--help"]) == 0
    assert "--cache-dir DIR" in capsys.readouterr().out
