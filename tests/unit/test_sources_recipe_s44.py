"""A recipe's evidence records every energy source its windows used; an old recipe (one `source`)
still loads, and verify takes a recorded mix of the NVML meter's two readings as that meter."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer import verify
from optimizer.config import compose_run_config
from optimizer.errors import UserError
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, WindowResult
from optimizer.recipe import build_recipe, read_recipe, write_recipe
from optimizer.recipe_fields import recorded_sources
from optimizer.search.runner import SearchOutcome

from .factories import WEIGHT_SHA, candidate_result, quality_result, recipe_data, target_spec

CHECKED_IN = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "recipe.yaml"


def _perf(*sources: str) -> PerformanceResult:
    windows = [
        WindowResult(s, joules=10.0, active_joules=5.0, seconds=2.0, output_tokens=100, goodput_tokens=100)
        for s in sources
    ]
    return PerformanceResult.of_windows(windows, 1.0, LatencySummary.of([0.1], [0.01]), [])


def _recipe(*sources: str) -> dict[str, Any]:
    best = candidate_result(quality=quality_result(), performance=_perf(*sources))
    outcome = SearchOutcome(
        baseline=best, baseline_in_space=True, results=[best], not_reached=[], measuring_seconds=1.0
    )
    model = SimpleNamespace(identity=lambda: {"source": "/m", "weight_sha256": WEIGHT_SHA})
    prompts = SimpleNamespace(prompts=torch.arange(64).reshape(16, 4))
    setup = SimpleNamespace(
        model=model, target=target_spec(), text_sha256="cd" * 32, streams=None, workload=prompts
    )
    return build_recipe(compose_run_config([]), setup, best, outcome, [], "ctx", 3.0)


def test_a_mixed_result_round_trips_through_a_recipe(tmp_path: Path) -> None:
    data = _recipe("nvml", "nvml-power-poll", "nvml")
    energy = data["evidence"]["energy"]
    assert energy["sources"] == ["nvml", "nvml-power-poll"]
    assert energy["source"] == "nvml+nvml-power-poll" and energy["is_estimate"] is False
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert recorded_sources(recipe.evidence["energy"]) == ("nvml", "nvml-power-poll")
    assert recipe.target.energy_source == "auto"  # verify meters the boards as they are here


def test_an_estimate_mixed_in_is_recorded_as_an_estimate() -> None:
    energy = _recipe("rapl", "estimate")["evidence"]["energy"]
    assert energy["is_estimate"] is True and energy["sources"] == ["rapl", "estimate"]


def test_an_old_recipe_without_sources_still_loads(tmp_path: Path) -> None:
    data = recipe_data()
    assert "sources" not in data["evidence"]["energy"]
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert recorded_sources(recipe.evidence["energy"]) == ("estimate",)
    assert recipe.target.energy_source == "estimate"


def test_the_checked_in_recipe_passes_its_source_check() -> None:
    recipe = read_recipe(CHECKED_IN)
    energy = recipe.evidence["energy"]
    assert recorded_sources(energy) == ("estimate",) and recipe.target.energy_source == "estimate"
    assert verify.source_check(str(energy["source"]), "estimate").passed


@pytest.mark.parametrize("sources", [["nvml"], "nvml", [], ["nvml", 3]])
def test_a_hand_edited_sources_list_names_its_field(tmp_path: Path, sources: object) -> None:
    data = copy.deepcopy(recipe_data())
    data["evidence"]["energy"]["sources"] = sources  # the label is `estimate`
    with pytest.raises(UserError) as info:
        read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert info.value.field == "recipe.evidence.energy.sources"


@pytest.mark.parametrize("here", ["nvml", "nvml-power-poll"])
def test_verify_takes_a_recorded_nvml_mix_as_the_same_meter(here: str) -> None:
    check = verify.source_check("nvml+nvml-power-poll", here)
    assert check.passed and "same NVML meter" in check.measured, check


@pytest.mark.parametrize(
    ("recorded", "here"),
    [
        ("rapl+estimate", "rapl"),
        ("rapl+estimate", "estimate"),
        ("nvml+rapl", "nvml"),
        ("nvml+nvml-power-poll", "rapl"),
    ],
)
def test_verify_fails_any_other_mix(recorded: str, here: str) -> None:
    assert not verify.source_check(recorded, here).passed
