"""Hand-edited recipes: a value of the wrong type names its field, a recorded request length must be
a token count, and settings this machine's backend rules exclude are refused before they are built."""

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
from optimizer.recipe import load_recipe, read_recipe, write_recipe
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


@pytest.mark.parametrize(
    ("part", "key", "value", "field", "kind"),
    [
        ("settings", "step_interval_ms", "5", "recipe.settings.step_interval_ms", "a number"),
        ("settings", "step_interval_ms", True, "recipe.settings.step_interval_ms", "a number"),
        ("workload", "prompt_tokens", "64", "recipe.measurement.workload.prompt_tokens", "an integer"),
        ("workload", "prompt_tokens", 64.5, "recipe.measurement.workload.prompt_tokens", "an integer"),
        ("workload", "rates", [1, "2"], "recipe.measurement.workload.rates", "a list of numbers"),
        ("slo", "tpot_ms", "250", "recipe.measurement.workload.slo.tpot_ms", "a number or null"),
        ("lengths", "mean", "128", "recipe.measurement.workload.prompt_lengths.mean", "an integer"),
        ("quality", "seq_tokens", "64", "recipe.measurement.quality.seq_tokens", "an integer"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_field_and_the_type(
    tmp_path: Path, recipe_dict: dict[str, Any], part: str, key: str, value: Any, field: str, kind: str
) -> None:
    """A quoted number failed a comparison inside the config: `malformed field ('>=' not supported
    between instances of 'str' and 'int')`, naming no field."""
    measurement = recipe_dict["measurement"]
    block = {
        "settings": recipe_dict["settings"],
        "workload": measurement["workload"],
        "slo": measurement["workload"]["slo"],
        "lengths": measurement["workload"]["prompt_lengths"],
        "quality": measurement["quality"],
    }[part]
    block[key] = value
    error = _refused(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert error.field == field
    assert f"not {kind}" in error.problem and key in error.fix


def test_a_quoted_number_is_shown_unquoted_in_the_fix(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    recipe_dict["settings"]["step_interval_ms"] = "5"
    assert _refused(write_recipe(tmp_path / "recipe.yaml", recipe_dict)).fix.endswith("step_interval_ms: 5")


def test_whole_numbers_for_float_fields_and_nulls_read_as_before(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    """YAML writes 5.0 as 5 after a hand edit; a null latency limit is no limit."""
    workload = recipe_dict["measurement"]["workload"]
    workload |= {"kind": "serving", "requests": 32, "min_window_seconds": 2, "rate": 3, "rates": [1, 2.5]}
    workload["slo"] |= {"ttft_ms": None, "tpot_ms": 300}
    recipe_dict["constraints"]["slo"] = {"ttft_ms": None, "tpot_ms": 300}
    recipe_dict["settings"] |= {"loop": "slots", "kv_cache": "static", "step_interval_ms": 5}
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert recipe.workload.min_window_seconds == 2 and recipe.workload.rates == [1, 2.5]
    assert recipe.workload.slo.tpot_ms == 300 and recipe.workload.slo.ttft_ms is None
    assert isinstance(recipe.candidate.settings, TorchSettings)
    assert recipe.candidate.settings.step_interval_ms == 5


@pytest.mark.parametrize("value", ["900", -5, 0, True, 2.5])
def test_a_recorded_longest_request_that_is_no_token_count_is_refused(
    tmp_path: Path, recipe_dict: dict[str, Any], value: Any
) -> None:
    """A string was ignored (the engine sized from the workload's bound) and -5 reached reserve()."""
    recipe_dict["measurement"]["longest_request_tokens"] = value
    error = _refused(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert error.field == "recipe.measurement.longest_request_tokens"
    assert repr(value) in error.problem


@pytest.mark.parametrize("value", [None, 353, "absent"])
def test_a_recorded_longest_request_absent_null_or_a_count_reads(
    tmp_path: Path, recipe_dict: dict[str, Any], value: Any
) -> None:
    """Older recipes, and an offline one, record none."""
    if value != "absent":
        recipe_dict["measurement"]["longest_request_tokens"] = value
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert recipe.data["measurement"].get("longest_request_tokens") == (None if value == "absent" else value)


def _loadable(monkeypatch: pytest.MonkeyPatch, resolved: list[str], **target: Any) -> list[Candidate]:
    """This machine as `target_spec(**target)`; the weights resolve (noted) and every build works."""

    def resolve(cfg: Any, cache: Path, **_: Any) -> SimpleNamespace:
        resolved.append(cfg.source)
        return SimpleNamespace(weight_sha256=SHA, shape=None, format="hf-dir")

    built: list[Candidate] = []

    def build(model: Any, candidate: Candidate, *args: Any) -> object:
        built.append(candidate)
        return object()

    monkeypatch.setattr(model_module, "resolve_model", resolve)
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec(**target))
    monkeypatch.setattr(registry, "build_engine", build)
    return built


@pytest.mark.parametrize("kv_cache", ["offloaded", "offloaded_static"])
def test_settings_the_backend_rules_exclude_here_are_refused_before_a_build_that_works(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kv_cache: str
) -> None:
    """An offloaded KV cache builds on a CPU, but transformers' cache update asserts CUDA at the
    first generate (AssertionError: Torch not compiled with CUDA enabled): refused at load, as
    verify refuses it, before the weights are hashed."""
    recipe_dict["settings"] = Candidate(
        TorchSettings(precision="bf16", kv_cache=kv_cache), batch_size=8, threads=2
    ).to_dict()
    resolved: list[str] = []
    built = _loadable(monkeypatch, resolved)
    with pytest.raises(UserError) as info:
        load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict), cache_dir=tmp_path)
    assert info.value.field == "recipe.settings"
    assert "offloading the KV cache to host memory needs a GPU target" in info.value.problem
    assert "load it on a machine like the recipe's (Test CPU, 2 cores)" in info.value.fix
    assert built == [] and resolved == []


def test_settings_that_only_run_slower_here_still_load(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 without native bf16 (emulated) and more threads than cores run correctly, only slower:
    the rules keep the search from measuring them here, a deployment may still load them."""
    path = write_recipe(tmp_path / "recipe.yaml", copy.deepcopy(recipe_dict))
    built = _loadable(monkeypatch, [], bf16=False, cores=1)
    load_recipe(path, cache_dir=tmp_path)
    assert built == [read_recipe(path).candidate]


def test_a_failed_build_a_rule_left_to_the_build_explains_names_it_with_the_backends_error(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules not applied before the build (here: no native bf16) still name a build that fails."""
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    _loadable(monkeypatch, [], bf16=False)

    def build(*args: Any) -> None:
        raise RuntimeError("bf16 matmul is not implemented here")

    monkeypatch.setattr(registry, "build_engine", build)
    with pytest.raises(UserError) as info:
        load_recipe(path, cache_dir=tmp_path)
    assert info.value.field == "recipe.settings" and "target has no native bf16" in info.value.problem
    assert isinstance(info.value.__cause__, RuntimeError)
