"""optimize(cfg) end to end on the tiny model: files written, resume from the store, infeasible SLO.

The target is this CPU reported as one core (threads 1): a tiny model runs faster on one thread
than on two contended ones, which keeps the test short on a busy 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimizer import target as target_module
from optimizer.config import SearchConfig, SloConfig, compose_run_config
from optimizer.measure import energy
from optimizer.pipeline import RunResult
from optimizer.results import MEASURED
from optimizer.search.finalists import finalist_pool
from optimizer.space import Candidate


def stored_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT seq, candidate_key FROM wattsmith_trials ORDER BY seq").fetchall()


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("pipeline")
    detect_cpu = target_module._detect_cpu

    def one_core() -> tuple[str, int, int, bool]:
        model, _cores, memory, bf16 = detect_cpu()
        return model, 1, memory, bf16

    def optimize(name: str, *extra: str) -> RunResult:
        import optimizer

        cfg = compose_run_config(
            [
                f"model={tiny_model_dir}",
                "target=cpu",
                "workload=quick",
                "workload.min_window_seconds=0.2",
                "workload.repeats=2",
                "workload.idle_seconds=0.1",
                "workload.warmup_batches=1",
                "space.batch_sizes=[1,2]",
                "space.torch.quantizations=[none]",
                "quality.num_sequences=2",
                "quality.seq_tokens=32",
                f"output_dir={root / name}",
                f"store_path={root / 'trials.db'}",
                f"cache_dir={root / 'cache'}",
                *extra,
            ]
        )
        return optimizer.optimize(cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(target_module, "_detect_cpu", one_core)
        mp.setattr(energy, "POWERCAP", root / "no-powercap")  # the estimate, even where RAPL is readable
        mp.setenv("WATTSMITH_CACHE", str(root / "cache"))
        for name in ("TORCHINDUCTOR_CACHE_DIR", "ORT_DISABLE_TELEMETRY"):  # optimize() sets these
            mp.delenv(name, raising=False)
        yield root, optimize


@pytest.fixture(scope="module")
def first(run) -> RunResult:
    _, optimize = run
    return optimize("first")


def test_first_run_writes_recipe_report_plot_results(first: RunResult, run) -> None:
    root, _ = run
    out = root / "first"
    assert first.output_dir == out
    for name in ("recipe.yaml", "report.md", "pareto.png", "results.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert first.infeasible is None
    assert first.best is not None and first.best.feasible
    assert first.recipe_path == out / "recipe.yaml"
    assert first.baseline.role == "baseline"
    assert first.baseline.status == MEASURED
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    searched = [r for r in rows if r["role"] != "finalist"]
    # cpu-default's: the baseline, torch-cb at batch 1 and 2, the extra torch b8 and slot loop b16
    assert len(searched) == len(first.results) == 5
    assert all(not r.reused for r in first.results)
    # the best three feasible (or near misses of workload=quick's SLO), re-measured in two
    # interleaved rounds, are in the file too
    finalists = [r for r in rows if r["role"] == "finalist"]
    pool = finalist_pool(first.results, SearchConfig(), SloConfig(tpot_ms=250))
    assert len(pool) == min(3, sum(r.feasible for r in first.results) + sum(not r.feasible for r in pool))
    assert len(finalists) == 2 * len(pool)


def test_recipe_names_the_estimate_and_the_selection(first: RunResult, tiny_model_dir: Path) -> None:
    assert first.recipe_path is not None
    recipe = yaml.safe_load(first.recipe_path.read_text())
    assert recipe["schema"] == "wattsmith.recipe/v1"
    assert recipe["evidence"]["energy"]["source"] == "estimate"
    assert recipe["evidence"]["energy"]["is_estimate"] is True
    # the winner's windows of both finalist rounds (workload.repeats=2 each): what it was selected on
    assert recipe["evidence"]["energy"]["windows"] == 4 == len(recipe["evidence"]["energy"]["window_seconds"])
    assert all(s >= 0.2 for s in recipe["evidence"]["energy"]["window_seconds"])
    probes = recipe["evidence"]["energy"]["window_cpu_probe_mibps"]  # the real probe, before each window
    assert len(probes) == 4 and all(p > 0 for p in probes)
    assert first.best is not None
    assert recipe["settings"] == first.best.candidate.to_dict()
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert recipe["model"]["weight_sha256"] == hashlib.sha256(weights).hexdigest()
    assert recipe["target"]["kind"] == "cpu"
    # the best was chosen among re-measured finalists, and the recipe says how
    selection = recipe["evidence"]["selection"]
    assert selection["finalists"][0]["label"] == first.best.candidate.label()
    assert all(len(f["goodput_tokens_per_joule"]["ci95"]) == 2 for f in selection["finalists"])
    assert isinstance(selection["distinguishable_from_runner_up"], bool) and selection["reason"]
    assert "## Selection among finalists" in (first.output_dir / "report.md").read_text()


def test_recipe_reads_back(first: RunResult) -> None:
    from optimizer.recipe import read_recipe

    assert first.recipe_path is not None and first.best is not None
    recipe = read_recipe(first.recipe_path)
    assert recipe.candidate == first.best.candidate
    assert recipe.workload.min_window_seconds == 0.2


def test_report_labels_the_estimate(first: RunResult) -> None:
    report = (first.output_dir / "report.md").read_text()
    assert "ESTIMATE" in report
    assert first.best is not None and first.best.candidate.label() in report


def test_second_identical_run_reuses_every_candidate(first: RunResult, run) -> None:
    root, optimize = run
    before = stored_rows(root / "trials.db")
    rounds = [r for r in results_of(root / "first") if r["role"] == "finalist"]
    assert rounds and len(before) == len(first.results) + len(rounds)  # each finalist round too
    second = optimize("second")
    assert stored_rows(root / "trials.db") == before  # nothing measured again, finalists included
    assert second.results and all(r.reused for r in second.results)
    assert second.best is not None and first.best is not None
    # the same finalists and rounds, so the same selection
    finalists = [finalist_keys(root / name) for name in ("first", "second")]
    assert finalists[0] == finalists[1] and second.best.candidate.key() == first.best.candidate.key()
    assert (root / "second" / "recipe.yaml").is_file()


def test_a_bf16_reference_judges_every_candidate_against_the_checkpoint_in_bf16(
    first: RunResult, run
) -> None:
    """quality.reference=bf16 (a checkpoint judged against itself as shipped): a bf16 candidate has
    exactly the reference's numerics, an fp32 one differs from it, the baseline runs in bf16, and
    the recipe and the report name the reference."""
    root, optimize = run
    fp32_and_bf16 = "space.extra=[{batch_size:2,precision:fp32},{batch_size:2,precision:bf16}]"
    result = optimize("bf16-reference", "quality.reference=bf16", fp32_and_bf16)
    assert result.baseline.candidate.settings.precision == "bf16"
    by_precision: dict[str, list] = {"fp32": [], "bf16": []}
    for r in result.results:
        assert r.quality is not None and not r.reused  # the quality rows of another reference
        by_precision[r.candidate.settings.precision].append(r.quality)
    # the baseline, two torch-cb batch sizes and the bf16 extra; the fp32 extra
    assert (len(by_precision["bf16"]), len(by_precision["fp32"])) == (4, 1)
    for same in by_precision["bf16"]:
        assert (same.ppl_increase, same.top1_agreement, same.mean_kl) == (0.0, 1.0, 0.0)
    assert all(other.mean_kl > 0 for other in by_precision["fp32"])
    assert result.recipe_path is not None
    recipe = yaml.safe_load(result.recipe_path.read_text())
    assert recipe["measurement"]["quality"]["reference"] == "bf16"
    assert "vs bf16 eager" in (root / "bf16-reference" / "report.md").read_text()


def results_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def finalist_keys(out: Path) -> set[str]:
    return {Candidate.from_dict(r["candidate"]).key() for r in results_of(out) if r["role"] == "finalist"}


def test_impossible_slo_is_reported_not_recipe(first: RunResult, run) -> None:
    root, optimize = run
    stale = root / "infeasible" / "recipe.yaml"  # an earlier run's, in a reused output_dir
    stale.parent.mkdir()
    stale.write_text("schema: an earlier selection\n")
    result = optimize("infeasible", "workload.slo.tpot_ms=0.0001")
    assert result.infeasible is not None
    assert result.infeasible.field.startswith("workload.slo")
    assert result.best is None and result.recipe_path is None
    out = root / "infeasible"
    assert not (out / "recipe.yaml").exists()
    assert (out / "report.md").is_file()
    assert "Nothing feasible" in (out / "report.md").read_text()
    measured = [r for r in result.results if r.status == MEASURED]
    assert measured and all(not r.feasible for r in measured)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["performance"]["slo_violations"] for r in results if r["status"] == MEASURED)


def test_with_nothing_feasible_the_near_misses_are_re_measured(first: RunResult, run) -> None:
    root, optimize = run
    # a TPOT target no measurement meets (0.0001 ms would be pruned by the roofline unmeasured),
    # and search.near_miss so wide that every candidate is a near miss: they are measured again,
    # miss again, and the error still names the SLO
    result = optimize(
        "near-misses", "workload.slo.tpot_ms=0.05", "search.near_miss=1e9", "search.finalist_rounds=1"
    )
    assert result.infeasible is not None and result.infeasible.field == "workload.slo"
    assert "measured candidates miss the latency SLO" in result.infeasible.problem
    assert result.best is None and result.recipe_path is None
    out = root / "near-misses"
    measured = [r for r in result.results if r.status == MEASURED]
    finalists = [r for r in results_of(out) if r["role"] == "finalist"]
    assert len(finalists) == min(3, len(measured)) >= 1
    assert all(r["performance"]["slo_violations"] for r in finalists)
    report = (out / "report.md").read_text()
    assert "No candidate met the latency SLO in the search" in report
    assert "no finalist met the SLO in every re-measurement" in report


def test_a_near_miss_that_meets_the_slo_when_re_measured_gets_the_recipe(
    first: RunResult, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing met the SLO in the search; its best near miss met it in every re-measurement (here
    by making the re-measurements fast: the tiny model cannot be slowed in the search alone)."""
    from optimizer import pipeline
    from optimizer.measure.latency import LatencySummary
    from optimizer.measure.workload import PerformanceResult
    from optimizer.search.evaluate import Evaluator

    evaluate, remeasure = Evaluator.evaluate, pipeline.remeasure

    def on_time(self: Evaluator, candidate: Candidate, role: str = "candidate") -> Any:
        result = evaluate(self, candidate, role)
        performance = result.performance
        assert performance is not None
        windows = [replace(w, goodput_tokens=w.output_tokens) for w in performance.windows]
        fast = LatencySummary.of([1e-6] * 4, [1e-6] * 4)
        return replace(
            result, performance=PerformanceResult.of_windows(windows, performance.idle_watts, fast, [])
        )

    def fast_rounds(*args: Any) -> Any:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Evaluator, "evaluate", on_time)
            return remeasure(*args)

    monkeypatch.setattr(pipeline, "remeasure", fast_rounds)
    root, optimize = run
    result = optimize(
        "near-miss-selected",
        "workload.slo.tpot_ms=0.05",
        "search.near_miss=1e9",
        "search.finalists=2",  # (a pool of its own: the rounds of the test above are not reused)
        "search.finalist_rounds=1",
    )
    assert not any(r.feasible for r in result.results)
    assert result.infeasible is None and result.best is not None and result.best.feasible
    assert result.recipe_path is not None
    recipe = yaml.safe_load(result.recipe_path.read_text())
    finalists = recipe["evidence"]["selection"]["finalists"]
    assert len(finalists) == 2 and all(f["near_miss"] for f in finalists)
    assert finalists[0]["label"] == result.best.candidate.label()
    assert "the only finalist" not in recipe["evidence"]["selection"]["reason"]
    assert (
        "missed the SLO in the search's run and met it in every re-measurement"
        in (recipe["evidence"]["selection"]["reason"])
    )
    report = (root / "near-miss-selected" / "report.md").read_text()
    assert "No candidate met the latency SLO in the search" in report


def test_diagnose_names_the_slo_when_measured_candidates_miss_it(make_result, make_performance) -> None:
    from optimizer.pipeline import diagnose_infeasible

    slow = make_result(
        performance=make_performance(slo_violations=["TPOT p90 900 ms > workload.slo.tpot_ms 250"])
    )
    error = diagnose_infeasible([slow])
    assert error.field == "workload.slo"
    assert "TPOT p90 900 ms" in error.problem


def test_diagnose_names_a_traces_own_rate_and_the_fixes_that_change_it(make_result, make_performance) -> None:
    """A trace is replayed at its own times: a lower workload.rate changes nothing and
    workload.rates is refused, so the error says the trace's rate and what does apply."""
    from optimizer.measure.workload import ServingSummary
    from optimizer.pipeline import diagnose_infeasible

    def missed(stream: str) -> Any:
        serving = ServingSummary(
            stream=stream,
            stream_sha256="ab" * 32,
            rate=10.0,
            offered_rate=10.0,
            requests=40,
            window_requests=30,
            met_slo_fraction=0.5,
            joules_per_request=1.0,
            idle_fraction=0.0,
            mean_in_flight=3.0,
            growing_windows=1,
            ttft_p90_ms=9000.0,
            e2e_p90_ms=9000.0,
            max_lateness_ms=0.0,
            curve=[{"rate": 10.0, "met_slo_fraction": 0.5}],
        )
        perf = make_performance(slo_violations=["TTFT p90 9000 ms > workload.slo.ttft_ms 2000"])
        return make_result(performance=replace(perf, serving=serving))

    error = diagnose_infeasible([missed("trace requests.jsonl")])
    assert error.field == "workload.trace" and "the trace's 10 req/s" in error.problem
    assert "workload.slo" in error.fix and "slower trace" in error.fix and "workload.rate" not in error.fix
    generated = diagnose_infeasible([missed("chat: poisson 10 req/s, seed 0")])
    assert generated.field == "workload.rate" and "no candidate holds 10 req/s" in generated.problem
    assert "lower workload.rate" in generated.fix


def test_diagnose_names_quality_and_failures(make_result, make_quality) -> None:
    from optimizer.pipeline import diagnose_infeasible
    from optimizer.results import FAILED, REJECTED

    rejected = make_result(status=REJECTED, reason="KL 0.2 > quality.max_kl 0.05", quality=make_quality(0.2))
    assert diagnose_infeasible([rejected]).field == "quality"
    assert diagnose_infeasible([make_result(status=FAILED, reason="oom")]).field == "space"
    assert diagnose_infeasible([]).field == "space"


def test_a_space_with_nothing_to_measure_names_the_rules_or_the_memory_budget(make_candidate) -> None:
    """Known before anything is measured: the run stops there, naming what removed every candidate."""
    from types import SimpleNamespace

    from optimizer.config import compose_run_config
    from optimizer.pipeline import nothing_to_search

    gpu_only = "TensorRT engines need an NVIDIA GPU target"
    excluded = [(make_candidate(batch_size=b), gpu_only) for b in (1, 8)]
    plan: Any = SimpleNamespace(candidates=[], pruned=[], excluded=excluded)
    error = nothing_to_search(plan, compose_run_config([]))
    assert error.field == "space" and f"2 × {gpu_only}" in error.problem
    plan.pruned = [(make_candidate(batch_size=64), "needs ~9.0 GiB, the budget is 1.0 GiB")]
    assert nothing_to_search(plan, compose_run_config([])).field == "space.batch_sizes"
    error = nothing_to_search(plan, compose_run_config(["target.memory_gib=1"]))
    assert error.field == "target.memory_gib" and "needs ~9.0 GiB" in error.problem


def test_diagnose_names_the_budget_that_left_the_space_unmeasured() -> None:
    from optimizer.pipeline import diagnose_infeasible

    capped = diagnose_infeasible([], 3, capped=True)
    assert capped.field == "search.max_candidates" and "3 not reached" in capped.problem
    assert diagnose_infeasible([], 3).field == "search.budget_minutes"


def test_diagnose_does_not_blame_the_slo_for_a_feasible_baseline(
    make_result, make_candidate, make_quality, make_performance
) -> None:
    from optimizer.pipeline import diagnose_infeasible
    from optimizer.results import REJECTED

    baseline = make_result(
        candidate=make_candidate(batch_size=1),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(),  # meets the SLO
    )
    rejected = make_result(
        candidate=make_candidate(batch_size=8, precision="bf16"),
        status=REJECTED,
        reason="KL 0.2 > quality.max_kl 0.01",
        quality=make_quality(0.2),
    )
    assert baseline.feasible
    assert diagnose_infeasible([baseline, rejected]).field == "quality"
