"""Recipe loading errors: a hand-edited recipe's missing or misspelt measurement field, a bad
`request_tokens`, more threads than this host's cores, and a recorded relative model path that is
found nowhere each say which field and what it needs."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import optimizer.backends.registry as registry
import optimizer.model as model_module
import optimizer.target as target_module
from optimizer.errors import UserError
from optimizer.recipe import load_recipe, read_recipe, write_recipe
from unit.factories import WEIGHT_SHA as SHA
from unit.factories import recipe_data, target_spec

REPO = Path(__file__).parents[2]
Edit = Callable[[dict[str, Any]], Any]


@pytest.fixture
def recipe_dict() -> dict[str, Any]:
    data = recipe_data()
    data["measurement"]["energy_estimate"] = {
        "cpu_active_watts_per_core": 5.0,
        "cpu_idle_watts_per_core": 1.5,
    }
    return data


def _workload(d: dict[str, Any]) -> dict[str, Any]:
    workload: dict[str, Any] = d["measurement"]["workload"]
    return workload


def _estimate(d: dict[str, Any]) -> dict[str, Any]:
    estimate: dict[str, Any] = d["measurement"]["energy_estimate"]
    return estimate


@pytest.mark.parametrize(
    ("edit", "field", "problem", "fix"),
    [
        (lambda d: _workload(d).pop("slo"), "measurement.workload.slo", "is missing", "percentile, ttft_ms"),
        (lambda d: _workload(d).update(slo="fast"), "measurement.workload.slo", "not a mapping", "tpot_ms"),
        (lambda d: d["target"].pop("kind"), "target.kind", "is missing", "cpu or cuda"),
        (lambda d: d["target"].update(kind=None), "target.kind", "is missing", "cpu or cuda"),
        (lambda d: _workload(d).update(ratez=2), "measurement.workload.ratez", "not a field", "rate, rates"),
        (
            lambda d: _workload(d)["slo"].update(ttft=1),
            "measurement.workload.slo.ttft",
            "not a field",
            "ttft_ms",
        ),
        (
            lambda d: _workload(d)["prompt_lengths"].update(meen=1),
            "measurement.workload.prompt_lengths.meen",
            "not a field",
            "mean",
        ),
        (
            lambda d: _workload(d).update(prompt_lengths=5),
            "measurement.workload.prompt_lengths",
            "not a mapping",
            "kind, mean",
        ),
        (
            lambda d: d["measurement"]["quality"].update(txt="x"),
            "measurement.quality.txt",
            "not a field",
            "text",
        ),
        (
            lambda d: _estimate(d).update(cpu_active_watts_per_core="five"),
            "measurement.energy_estimate.cpu_active_watts_per_core",
            "is 'five', not a number",
            "cpu_active_watts_per_core: 5.0",
        ),
        (
            lambda d: _estimate(d).update(cpu_idle_watts_per_core="2.5"),  # a quoted number
            "measurement.energy_estimate.cpu_idle_watts_per_core",
            "not a number",
            "cpu_idle_watts_per_core: 2.5",
        ),
        (
            lambda d: _estimate(d).update(cpu_idle_watts_per_core=True),  # read as 1.0
            "measurement.energy_estimate.cpu_idle_watts_per_core",
            "not a number",
            "a number",
        ),
        (
            lambda d: _estimate(d).update(cpu_idle_watts_per_core=None),
            "measurement.energy_estimate.cpu_idle_watts_per_core",
            "not a number",
            "a number",
        ),
        (
            lambda d: _estimate(d).update(cpu_active_watts_per_core=-1.0),  # named target.* before
            "measurement.energy_estimate.cpu_active_watts_per_core",
            "must be > 0",
            "TDP",
        ),
    ],
)
def test_a_missing_or_misspelt_measured_field_is_named_with_what_it_needs(
    tmp_path: Path, recipe_dict: dict[str, Any], edit: Edit, field: str, problem: str, fix: str
) -> None:
    """Each read 'recipe: ... is missing or has a malformed field (<a Python exception>)'."""
    edit(recipe_dict)
    with pytest.raises(UserError) as info:
        read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert info.value.field == f"recipe.{field}"
    assert problem in info.value.problem and fix in info.value.fix
    assert "malformed field" not in info.value.problem


def test_the_recorded_coefficients_and_slo_are_read_as_before(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    _estimate(recipe_dict).update(
        cpu_active_watts_per_core=7, cpu_idle_watts_per_core=0.5
    )  # an int is a number
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert (recipe.target.cpu_active_watts_per_core, recipe.target.cpu_idle_watts_per_core) == (7.0, 0.5)
    assert recipe.target.kind == "cpu" and recipe.workload.slo.tpot_ms == 250.0


def _loadable(monkeypatch: pytest.MonkeyPatch, cores: int = 4) -> list[str]:
    """A fake model and engine on a CPU of `cores`; the sources resolve_model was asked for."""
    resolved: list[str] = []

    def resolve(cfg: Any, cache: Path, **_: Any) -> SimpleNamespace:
        resolved.append(cfg.source)
        return SimpleNamespace(weight_sha256=SHA, shape=None, format="hf-dir")

    monkeypatch.setattr(model_module, "resolve_model", resolve)
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec(cores=cores))
    monkeypatch.setattr(registry, "build_engine", lambda *a: object())
    return resolved


@pytest.mark.parametrize("tokens", [-5, 0, 2.5, "64", True])
def test_request_tokens_that_is_no_count_is_refused_before_anything_is_built(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tokens: Any
) -> None:
    """-5, 0 and 2.5 were sized as the smallest slot without a word; '64' failed inside reserve()."""
    resolved = _loadable(monkeypatch)
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    with pytest.raises(UserError) as info:
        load_recipe(path, cache_dir=tmp_path, request_tokens=tokens)
    assert info.value.field == "request_tokens" and repr(tokens) in info.value.problem
    assert "whole number > 0" in info.value.fix and resolved == []


def test_more_threads_than_cores_loads_with_verifys_words_as_a_warning(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Verify refuses it (its evidence cannot be re-measured here); a deployment with fewer cores
    still serves, only slower, and is told so, which it was not."""
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)  # threads 2
    _loadable(monkeypatch, cores=1)
    with caplog.at_level(logging.WARNING, logger="optimizer.recipe"):
        assert load_recipe(path, cache_dir=tmp_path) is not None
    warned = [r.getMessage() for r in caplog.records if "settings.threads" in r.getMessage()]
    assert len(warned) == 1
    assert "threads 2 > 1 cores" in warned[0] and "optimize verify refuses it" in warned[0]
    assert "set settings.threads to at most 1" in warned[0] and "Test CPU, 2 cores" in warned[0]
    caplog.clear()
    _loadable(monkeypatch, cores=2)
    with caplog.at_level(logging.WARNING, logger="optimizer.recipe"):
        load_recipe(path, cache_dir=tmp_path)
    assert not [r for r in caplog.records if "settings.threads" in r.getMessage()]


@pytest.mark.parametrize(("source", "fmt"), [("weights/tiny.gguf", "gguf"), ("weights", "hf-dir")])
def test_a_relative_local_source_found_nowhere_names_where_it_looked(
    tmp_path: Path,
    recipe_dict: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    fmt: str,
) -> None:
    """`weights/tiny.gguf` looks like a hub id: it was fetched from the hub (offline: 'could not be
    fetched from the hub'), though the recipe records local weights."""
    recipe_dict["model"] |= {"source": source, "format": fmt}
    folder, elsewhere = tmp_path / "repo" / "recipes" / "tiny", tmp_path / "elsewhere"
    for made in (folder, elsewhere):
        made.mkdir(parents=True)
    path = write_recipe(folder / "recipe.yaml", recipe_dict)
    monkeypatch.chdir(elsewhere)
    resolved = _loadable(monkeypatch)
    with pytest.raises(UserError) as info:
        load_recipe(path, cache_dir=tmp_path)
    error = info.value
    assert error.field == "recipe.model.source" and resolved == []
    assert str(elsewhere) in error.problem and str(path.parent) in error.problem and source in error.problem
    assert "model_source=" in error.fix and "hub" not in error.problem
    load_recipe(path, cache_dir=tmp_path, model_source="/given/weights")  # the caller's goes on
    assert resolved == ["/given/weights"]


def test_a_hub_id_and_a_found_relative_source_are_resolved_as_before(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = _loadable(monkeypatch)
    monkeypatch.chdir(tmp_path)
    recipe_dict["model"] |= {"source": "org/model", "format": "hub"}
    load_recipe(write_recipe(tmp_path / "hub.yaml", recipe_dict), cache_dir=tmp_path)
    (tmp_path / "weights").mkdir()
    recipe_dict["model"] |= {"source": "weights", "format": "hf-dir"}
    load_recipe(write_recipe(tmp_path / "local.yaml", recipe_dict), cache_dir=tmp_path)
    assert resolved == ["org/model", "weights"]


def _recipes_in_history() -> list[tuple[str, str]]:
    """(commit, text) of every committed version of the checked-in recipes; none without git."""
    try:
        log = subprocess.run(
            ["git", "log", "--format=%H", "--", "recipes/"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    versions = []
    for commit in log:
        for name in (REPO / "recipes").glob("*/recipe.yaml"):
            shown = subprocess.run(
                ["git", "show", f"{commit}:{name.relative_to(REPO)}"],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if shown.returncode == 0:
                versions.append((commit[:7], shown.stdout))
    return versions


def test_every_committed_version_of_the_checked_in_recipes_still_reads(tmp_path: Path) -> None:
    """The new checks refuse hand edits, not what an older optimize wrote."""
    versions = _recipes_in_history()
    if not versions:
        pytest.skip("no git history of recipes/ here")
    for commit, text in versions:
        path = tmp_path / f"{commit}.yaml"
        path.write_text(text)
        assert read_recipe(path).target.kind in ("cpu", "cuda"), commit
