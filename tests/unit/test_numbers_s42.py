"""Small figures keep their precision where a user reads them (`optimize verify`, the serving table)
or keeps them (the recipe YAML), and the serving table's tok/J agrees with its J/request."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from optimizer import verify
from optimizer.config import compose_run_config
from optimizer.measure.latency import LatencySummary
from optimizer.measure.workload import PerformanceResult, ServingSummary, Spread, WindowResult
from optimizer.recipe import _kept, _selection_evidence, build_recipe, read_recipe, write_recipe
from optimizer.report.serving import serving_section
from optimizer.results import MEASURED, CandidateResult
from optimizer.search.plan import prompt_pool
from optimizer.search.runner import SearchOutcome
from optimizer.select import Finalist, Selection
from unit.factories import WEIGHT_SHA, candidate_result, performance_result, quality_result, torch_candidate

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*/recipe.yaml"))


def test_verify_tells_cpu_scale_goodput_figures_apart() -> None:
    """An 8B model on a CPU makes ~0.01 tok/J: 0.0104 against 0.0096 read '0.010 vs 0.010'."""
    check = verify.goodput_check(0.0104, "rapl", 0.0096, "rapl", 0.25)
    assert check.recorded == "0.0104 (rapl)"
    assert check.measured == "0.00960 (rapl, 0.92x)"
    assert check.passed
    big = verify.goodput_check(1234.6, "nvml", 1200.0, "nvml", 0.25)  # no decimals to add past units
    assert (big.recorded, big.measured) == ("1235 (nvml)", "1200 (nvml, 0.97x)")


@pytest.mark.parametrize(
    ("value", "decimals", "kept"),
    [
        (0.000123456, 4, 0.00012346),  # fixed decimals stored 0.0001
        (1.23456789e-7, 6, 1.2346e-7),  # fixed decimals stored 0.0
        (-0.000123456, 4, -0.00012346),
        (1234.56789123, 6, 1234.567891),  # large figures look as before
        (12.3456789, 4, 12.3457),
        (0.5, 3, 0.5),
        (0.0, 4, 0.0),
    ],
)
def test_recipe_figures_keep_five_significant_digits(value: float, decimals: int, kept: float) -> None:
    assert _kept(value, decimals) == kept


def test_non_finite_figures_pass_through() -> None:
    assert _kept(math.inf, 4) == math.inf
    assert math.isnan(_kept(math.nan, 4))


def test_the_selection_interval_of_a_cpu_scale_finalist_does_not_collapse() -> None:
    finalist = Finalist("x", "k", [0.000118, 0.000126], 0.000122, 0.000111, 0.000133, None, True)
    row = _selection_evidence(Selection([finalist], "k", True, "r"))["finalists"][0]
    assert row["goodput_tokens_per_joule"] == {"mean": 0.000122, "ci95": [0.000111, 0.000133]}


def _recipe(tmp_path: Path, perf: PerformanceResult) -> Path:
    best = candidate_result(quality=quality_result(), performance=perf)
    outcome = SearchOutcome(
        baseline=best, baseline_in_space=True, results=[best], not_reached=[], measuring_seconds=1.0
    )
    pool = prompt_pool(compose_run_config([]))
    model = SimpleNamespace(identity=lambda: {"source": "/m", "weight_sha256": WEIGHT_SHA, "name": "m"})
    target = SimpleNamespace(
        fingerprint=lambda: {"kind": "cpu", "name": "cpu"},
        kind="cpu",
        cpu_active_watts_per_core=7.0,
        cpu_idle_watts_per_core=0.5,
    )
    prompts = SimpleNamespace(prompts=torch.arange(pool * 4).reshape(pool, 4))
    setup: Any = SimpleNamespace(
        model=model, target=target, text_sha256="cd" * 32, streams=None, workload=prompts
    )
    recipe = build_recipe(compose_run_config([]), setup, best, outcome, [], "ctx", 0.000123456)
    return write_recipe(tmp_path / "recipe.yaml", recipe)


def test_a_cpu_scale_recipe_round_trips_to_verify(tmp_path: Path) -> None:
    """What the recipe keeps is what verify compares with: 0.000123456 tok/J, not 0.000123."""
    goodput = 0.000123456
    perf = performance_result(goodput_tokens_per_joule=goodput)
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=10,
        window_requests=10,
        met_slo_fraction=1.0,
        joules_per_request=0.000123456,
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
    )
    perf = replace(
        perf, goodput_tokens_per_joule=Spread(goodput, 0.0000012345, goodput, goodput), serving=serving
    )
    recipe = read_recipe(_recipe(tmp_path, perf))
    energy = recipe.evidence["energy"]
    recorded = float(energy["goodput_tokens_per_joule"]["mean"])  # as verify reads it
    assert recorded == 0.00012346
    assert energy["goodput_tokens_per_joule"]["std"] == 0.0000012345
    assert recipe.evidence["serving"]["joules_per_request"] == 0.00012346
    assert recipe.data["measurement"]["idle_watts"] == 0.00012346
    # verify's comparison is unchanged: the same figure passes, one 30% below fails
    assert verify.goodput_check(recorded, "estimate", goodput, "estimate", 0.25).passed
    assert not verify.goodput_check(recorded, "estimate", 0.7 * goodput, "estimate", 0.25).passed
    # large figures look as they did: six decimals at most
    assert energy["watts"] == {"mean": 50.0, "std": 1.0, "min": 49.0, "max": 51.0}


@pytest.mark.parametrize("path", RECIPES)
def test_checked_in_recipes_still_load(path: Path) -> None:
    recipe = read_recipe(path)
    assert float(recipe.evidence["energy"]["goodput_tokens_per_joule"]["mean"]) > 0
    assert yaml.safe_load(path.read_text())["evidence"] == recipe.evidence


LATENCY = LatencySummary.of([0.1], [0.01])


def _window(joules: float, goodput: int) -> WindowResult:
    return WindowResult("rapl", joules, joules, 10.0, goodput, goodput)


def _served(batch_size: int, windows: list[WindowResult], completed: int) -> CandidateResult:
    joules = sum(w.joules for w in windows)
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=completed,
        window_requests=completed,
        met_slo_fraction=1.0,
        joules_per_request=joules / completed,  # as measure/serving.summarize: totals
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
    )
    perf = PerformanceResult.of_windows(windows, 1.0, LATENCY, [], serving)
    return CandidateResult(
        torch_candidate(batch_size=batch_size), MEASURED, quality=quality_result(), performance=perf
    )


def test_the_serving_tables_tok_per_joule_agrees_with_its_joules_per_request() -> None:
    """Same stream, same requests: A's windows differ (100 tokens on 1 J, then on 100 J), B's do not.
    A's mean of per-window figures (50.5 tok/J) beats B's 10, though A spends 5x B's J/request;
    pooled, A makes 1.98 tok/J and B ranks first, as its J/request says."""
    a = _served(8, [_window(1.0, 100), _window(100.0, 100)], 20)
    b = _served(4, [_window(10.0, 100), _window(10.0, 100)], 20)
    rows = [line for line in serving_section([a, b], Path("unused"), "") if line.startswith("| torch")]
    assert "| 10.0 | 100% | 1 |" in rows[0] and a.candidate.label() not in rows[0]
    assert "| 1.98 | 100% | 5.05 |" in rows[1]
    header = next(
        line for line in serving_section([a, b], Path("unused"), "") if line.startswith("| candidate")
    )
    assert "goodput tok/J (pooled)" in header
