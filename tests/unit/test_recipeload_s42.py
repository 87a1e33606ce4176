"""Recipe consumption: load_recipe and read_recipe on a recipe from another wattsmith version, a
hand-edited one, one checked into a model's repository, and one for another machine."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import optimizer.backends.registry as registry
import optimizer.model as model_module
import optimizer.target as target_module
from optimizer.errors import UserError
from optimizer.recipe import load_recipe, model_config_for, read_recipe, write_recipe
from optimizer.space import Candidate, TorchSettings
from unit.factories import WEIGHT_SHA as SHA
from unit.factories import recipe_data, target_spec


@pytest.fixture
def recipe_dict() -> dict[str, Any]:
    return recipe_data()


def _refused(path: Path) -> UserError:
    with pytest.raises(UserError) as info:
        read_recipe(path)
    return info.value


@pytest.mark.parametrize("value", ["false", "no", 5])
def test_a_trust_remote_code_that_is_no_boolean_is_refused(
    tmp_path: Path, recipe_dict: dict[str, Any], value: Any
) -> None:
    """bool("false") is True: a quoted false would have run the model repository's own code."""
    recipe_dict["model"]["trust_remote_code"] = value
    error = _refused(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert error.field == "recipe.model.trust_remote_code"
    assert "true or false" in error.fix


@pytest.mark.parametrize(
    ("key", "value"), [("source", None), ("source", 123), ("source", " "), ("revision", 1234567)]
)
def test_a_model_source_or_revision_of_the_wrong_type_names_its_key(
    tmp_path: Path, recipe_dict: dict[str, Any], key: str, value: Any
) -> None:
    """A null source was read as the path 'None'; an all-digit revision is a YAML number."""
    recipe_dict["model"][key] = value
    assert _refused(write_recipe(tmp_path / "recipe.yaml", recipe_dict)).field == f"recipe.model.{key}"


def test_a_boolean_or_absent_trust_remote_code_reads_as_before(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    assert not read_recipe(write_recipe(tmp_path / "a.yaml", recipe_dict)).model.trust_remote_code
    recipe_dict["model"] |= {"trust_remote_code": True, "revision": "0123abc"}
    model = read_recipe(write_recipe(tmp_path / "b.yaml", recipe_dict)).model
    assert model.trust_remote_code and model.revision == "0123abc"


def test_a_recipe_from_a_newer_wattsmith_says_to_upgrade(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    """A field or setting a later version added is no typo to remove: the fix is an upgrade."""
    newer = copy.deepcopy(recipe_dict) | {"wattsmith_version": "99.0.0"}
    for data in (newer | {"hint": 1}, newer | {"settings": newer["settings"] | {"new_knob": 1}}):
        error = _refused(write_recipe(tmp_path / "newer.yaml", data))
        assert "written by wattsmith 99.0.0" in error.problem
        assert error.fix.startswith("upgrade wattsmith")
    error = _refused(write_recipe(tmp_path / "same.yaml", recipe_dict | {"hint": 1}))  # this version's typo
    assert error.field == "recipe.hint" and "upgrade" not in error.fix and "written by" not in error.problem


def _fake_model(monkeypatch: pytest.MonkeyPatch, sources: list[str] | None = None) -> None:
    def resolve(cfg: Any, cache: Path, **_: Any) -> SimpleNamespace:
        if sources is not None:
            sources.append(cfg.source)
        return SimpleNamespace(weight_sha256=SHA, shape=None, format="hf-dir")

    monkeypatch.setattr(model_module, "resolve_model", resolve)


def test_a_relative_model_source_is_found_from_the_recipes_repository(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's layout: optimize ran at the repository's root on ./weights, the recipe is
    committed at recipes/<model>/recipe.yaml; a deployment loads it from anywhere."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    for folder in (repo / "weights", repo / "recipes" / "tiny", elsewhere):
        folder.mkdir(parents=True)
    recipe_dict["model"]["source"] = "./weights"
    path = write_recipe(repo / "recipes" / "tiny" / "recipe.yaml", recipe_dict)
    sources: list[str] = []
    _fake_model(monkeypatch, sources)
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())
    monkeypatch.setattr(registry, "build_engine", lambda *a: object())
    monkeypatch.chdir(elsewhere)
    load_recipe(path, cache_dir=tmp_path)
    assert sources == [str(repo / "weights")]
    monkeypatch.chdir(repo)  # where optimize ran: as before, the path as recorded
    assert model_config_for(read_recipe(path), None).source == "./weights"
    recipe = read_recipe(path)
    assert model_config_for(recipe, "./mine").source == "./mine"  # the caller's, as given
    for kept in ("smollm2", "org/model", "/abs/weights"):  # packaged, a hub id, absolute: untouched
        recipe_dict["model"]["source"] = kept
        assert model_config_for(read_recipe(write_recipe(path, recipe_dict)), None).source == kept


def test_a_model_source_found_nowhere_names_the_recipe_field_and_model_source(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve_model's fix is optimize's `model=`: a deployment passes model_source=."""
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())
    recipe_dict["model"]["source"] = "./nosuch"
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        load_recipe(path, cache_dir=tmp_path)
    assert info.value.field == "recipe.model.source" and "model_source=" in info.value.fix
    assert "model=" not in info.value.fix.replace("model_source=", "")
    with pytest.raises(UserError) as info:
        load_recipe(path, model_source="./other", cache_dir=tmp_path)
    assert info.value.field == "model_source"


def test_a_gpu_recipe_on_a_host_without_one_names_the_recipe_before_hashing_weights(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_dict["target"] |= {"kind": "cuda", "gpu": {"name": "NVIDIA H100 80GB HBM3"}}
    recipe_dict["evidence"]["energy"] |= {"source": "nvml", "is_estimate": False}
    monkeypatch.setattr(target_module, "_detect_gpu", lambda index: None)

    def resolve(*args: Any, **kwargs: Any) -> None:
        pytest.fail("the weights were resolved (hashed, de-quantized) for a recipe that cannot load here")

    monkeypatch.setattr(model_module, "resolve_model", resolve)
    with pytest.raises(UserError) as info:
        load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict), cache_dir=tmp_path)
    assert info.value.field == "recipe.target.kind"
    assert "NVIDIA H100" in info.value.problem and "target=" not in info.value.fix


def test_a_build_the_rules_exclude_here_says_why(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU-only quantization or a backend's missing package on this machine: the search's rule,
    as verify says it, not the backend's AssertionError or ImportError."""
    candidate = Candidate(
        TorchSettings(precision="bf16", quantization="int4-weight"), batch_size=8, threads=2
    )
    recipe_dict["settings"] = candidate.to_dict()
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    _fake_model(monkeypatch)
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())

    def build(*args: Any) -> None:
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(registry, "build_engine", build)
    with pytest.raises(UserError) as info:
        load_recipe(path, cache_dir=tmp_path)
    assert info.value.field == "recipe.settings"
    assert "int4-weight kernels need a CUDA GPU" in info.value.problem


def test_a_failed_build_the_rules_allow_and_a_working_one_they_exclude_are_as_before(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    _fake_model(monkeypatch)
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())

    def build(*args: Any) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(registry, "build_engine", build)
    with pytest.raises(RuntimeError, match="out of memory"):  # a reason the rules do not know of
        load_recipe(path, cache_dir=tmp_path)
    engine = object()
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec(cores=1))  # threads 2 > 1
    monkeypatch.setattr(registry, "build_engine", lambda *a: engine)
    assert load_recipe(path, cache_dir=tmp_path) is engine  # oversubscribed, but it loads as it did
