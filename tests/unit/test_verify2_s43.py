"""verify's model source as load_recipe finds it (a local one found nowhere refused, not tried as
a hub id; `--model`'s own errors naming --model), the fix for each reason it cannot run a recipe
here, and a null given to a setting that takes none."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer import verify
from optimizer.config.compose import compose_settings
from optimizer.errors import UserError
from optimizer.recipe import write_recipe
from optimizer.target import TargetSpec
from unit.factories import WEIGHT_SHA, recipe_data, target_spec


class _Stop(Exception):
    pass


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_recipe(path, data)


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The recipe's CPU here; the model sources resolve_model and prepare_measurement were given
    (either would look a missing path up on the hub), each stopping verify."""
    seen: list[str] = []

    def given(model_cfg: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(model_cfg.source)
        raise _Stop

    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(cores=2))
    monkeypatch.setattr(verify, "resolve_model", given)
    monkeypatch.setattr(verify, "prepare_measurement", given)
    return seen


def _local(folder: Path, source: str, fmt: str) -> Path:
    data = recipe_data()
    data["model"] |= {"source": source, "format": fmt}
    return _write(folder / "recipe.yaml", data)


@pytest.mark.parametrize(("source", "fmt"), [("weights/x.gguf", "gguf"), ("weights/tiny", "hf-dir")])
def test_a_relative_local_source_found_nowhere_is_refused_naming_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: list[str], source: str, fmt: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(UserError) as info:
        verify.verify_recipe(_local(tmp_path / "repo", source, fmt), cache_dir=tmp_path / "cache")
    error = info.value
    assert sources == []  # never tried as a hub id
    assert error.field == "recipe.model.source"
    assert str(elsewhere) in error.problem and str(tmp_path / "repo") in error.problem
    assert str(tmp_path / "repo" / source) in error.fix
    assert "--model" in error.fix and "model_source=" not in error.fix  # verify's flag, not load_recipe's


def test_a_found_source_and_a_hub_id_go_on(tmp_path: Path, sources: list[str]) -> None:
    (tmp_path / "repo" / "weights").mkdir(parents=True)
    (tmp_path / "repo" / "weights" / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(_Stop):
        verify.verify_recipe(_local(tmp_path / "repo", "weights/x.gguf", "gguf"), cache_dir=tmp_path)
    assert sources == [str(tmp_path / "repo" / "weights" / "x.gguf")]
    with pytest.raises(_Stop):
        verify.verify_recipe(_local(tmp_path / "hub", "org/model", "hub"), cache_dir=tmp_path)
    assert sources[-1] == "org/model"
    with pytest.raises(_Stop):  # --model replaces a source found nowhere, as in load_recipe
        verify.verify_recipe(
            _local(tmp_path / "given", "weights/y.gguf", "gguf"), model_source="/m/y.gguf", cache_dir=tmp_path
        )
    assert sources[-1] == "/m/y.gguf"


def test_an_empty_model_flag_is_named_with_verifys_fix(tmp_path: Path, sources: list[str]) -> None:
    """`--model " "`: the config's error named model.source with optimize's `model=`."""
    with pytest.raises(UserError) as info:
        verify.verify_recipe(
            _write(tmp_path / "recipe.yaml", recipe_data()), model_source=" ", cache_dir=tmp_path
        )
    assert info.value.field == "--model" and "--model" in info.value.fix
    assert "model=" not in info.value.fix and sources == []


def _refused(monkeypatch: pytest.MonkeyPatch, path: Path, here: TargetSpec, source: str) -> UserError:
    """verify's refusal on `here`, every check before it passing."""
    setup = SimpleNamespace(
        model=SimpleNamespace(weight_sha256=WEIGHT_SHA, shape=None, format="hf-dir"),
        target=here,
        meter=SimpleNamespace(source=source),
        text_sha256="cd" * 32,
        stream=None,
        workload=SimpleNamespace(prompts=None),
    )
    monkeypatch.setattr(verify, "detect_target", lambda cfg: here)
    monkeypatch.setattr(verify, "make_meter", lambda t: SimpleNamespace(source=source))
    monkeypatch.setattr(verify, "prepare_measurement", lambda *a: setup)
    with pytest.raises(UserError) as info:
        verify.verify_recipe(path, cache_dir=path.parent / "cache")
    assert info.value.field == "recipe.settings"
    return info.value


def _gpu_recipe(tmp_path: Path, **settings: Any) -> Path:
    data = recipe_data()
    data["target"] = {"kind": "cuda", "name": "h100", "cpu_model": "Test CPU", "cores": 16}
    data["target"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    data["evidence"]["energy"]["source"] = "nvml"
    data["settings"] |= settings
    return _write(tmp_path / "recipe.yaml", data)


def test_more_threads_than_this_hosts_cores_asks_for_a_host_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device check compares the GPU, not the host's cores: a package is not what is missing."""
    path = _gpu_recipe(tmp_path, threads=16)
    error = _refused(monkeypatch, path, target_spec(kind="cuda", cores=8), "nvml")
    assert "threads 16 > 8 cores" in error.problem
    assert "install" not in error.fix
    assert "NVIDIA H100 80GB HBM3 with at least 16 cores" in error.fix and "run optimize here" in error.fix


def test_a_cpu_recipe_asking_more_threads_than_it_records_cores_is_a_changed_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = recipe_data()
    data["settings"]["threads"] = 4  # the recipe records 2 cores: the device check passed on them
    path = _write(tmp_path / "recipe.yaml", data)
    error = _refused(monkeypatch, path, target_spec(cores=2), "estimate")
    assert "install" not in error.fix and "restore the recipe from git" in error.fix


def test_more_gpus_than_here_asks_for_a_host_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _gpu_recipe(tmp_path, threads=8, replicas=2, quantization="none")
    error = _refused(monkeypatch, path, target_spec(kind="cuda", cores=16), "nvml")
    assert "2 GPUs > 1" in error.problem
    assert "install" not in error.fix and "2 NVIDIA H100 80GB HBM3 GPUs" in error.fix


def test_a_missing_package_still_says_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "exclusion_reason", lambda *a: "llama-cpp-python is not installed")
    path = _write(tmp_path / "recipe.yaml", recipe_data())
    error = _refused(monkeypatch, path, target_spec(cores=2), "estimate")
    assert error.fix.startswith("install the package it names") and "Test CPU, 2 cores" in error.fix


@pytest.mark.parametrize(
    ("key", "needs", "example"),
    [
        ("workload.seed", "a whole number >= 0", "workload.seed=0"),
        ("space.batch_sizes", "a list of positive batch sizes", "space.batch_sizes=[1,8]"),
        ("quality.max_kl", "a number", "quality.max_kl=0.05"),
        ("model.trust_remote_code", "true or false", "model.trust_remote_code=false"),
        ("space.backends", "a list, each entry a string", "space.backends=[torch]"),
        ("workload.slo", "a group of settings", "workload.slo.<field>=value"),
    ],
)
def test_null_for_a_setting_without_one_names_it_and_what_it_needs(
    key: str, needs: str, example: str
) -> None:
    """Was Hydra's `Error merging override ... is not Optional` with the generic override fix."""
    with pytest.raises(UserError) as info:
        compose_settings([f"{key}=null"])
    assert info.value.field == key
    assert info.value.problem == f"cannot be null: it needs {needs}"
    assert info.value.fix.startswith(f"e.g. {example}")


@pytest.mark.parametrize(
    ("group", "line", "key"),
    [("workload", "seed: null", "workload.seed"), ("space", "batch_sizes: null", "space.batch_sizes")],
)
def test_null_in_a_preset_names_the_preset(tmp_path: Path, group: str, line: str, key: str) -> None:
    (tmp_path / group).mkdir()
    (tmp_path / group / "mine.yaml").write_text(line + "\n")
    with pytest.raises(UserError) as info:
        compose_settings([f"{group}=mine"], tmp_path)
    assert info.value.field == key
    assert info.value.problem.startswith(f"is null in the preset {group}/mine: it needs ")
    assert "delete that line" in info.value.fix
