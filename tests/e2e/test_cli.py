"""The `optimize` CLI on the real packaged SmolLM2-135M, with a small budget."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import optimize, stored

from optimizer.select import HEADROOM_TIE_MARGIN
from optimizer.space import Candidate

pytestmark = pytest.mark.slow

# Small but real: the packaged model, real text, short windows, two numerics x two batch sizes
# plus an int8-dynamic variant that the quality bound is expected to reject on this model.
SMALL = [
    "workload=quick",
    "space=cpu-batch",
    "workload.min_window_seconds=0.5",
    "workload.repeats=2",
    "workload.idle_seconds=0.5",
    "space.batch_sizes=[1,4]",
    "space.torch.precisions=[fp32,bf16]",
    "space.torch.quantizations=[none,int8-dynamic]",
    "quality.num_sequences=4",
    # a loose SLO: these tests check the mechanics (and verify re-measures), not this machine's speed
    "workload.slo.tpot_ms=2000",
]


def run_args(run_dir: Path) -> list[str]:
    return [*SMALL, f"output_dir={run_dir}", f"store_path={run_dir.parent / 'trials.db'}"]


@pytest.fixture(scope="session")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("search")
    proc = optimize(*run_args(root / "run1"), cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_run_writes_a_valid_recipe_report_and_plot(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, proc = first_run
    run = root / "run1"
    for name in ("recipe.yaml", "report.md", "pareto.png", "results.jsonl", "config.yaml"):
        assert (run / name).is_file(), name
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["schema"] == "wattsmith.recipe/v1"
    assert recipe["model"]["name"] == "SmolLM2-135M-Instruct"
    assert len(recipe["model"]["weight_sha256"]) == 64
    energy = recipe["evidence"]["energy"]
    assert energy["source"] == "estimate" and energy["is_estimate"] is True  # no RAPL/NVML on CI
    # the winner's windows in both finalist rounds (workload.repeats=2 each), what selection used
    assert energy["windows"] == len(energy["window_seconds"]) == 2 * 2
    assert all(s >= 0.5 for s in energy["window_seconds"])
    assert energy["goodput_tokens_per_joule"]["mean"] > 0
    assert recipe["evidence"]["baseline"]["settings"]["precision"] == "fp32"
    # throughput tokens/J: defined even when a loaded machine makes the baseline miss the SLO
    assert recipe["evidence"]["gain_vs_baseline"]["tokens_per_joule"] >= 1.0
    report = (run / "report.md").read_text()
    assert "ESTIMATE" in report and "## All candidates" in report
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in results} <= {"measured", "rejected", "failed", "pruned"}
    # Quality is checked first: a rejected candidate never got an energy window.
    assert all(r["performance"] is None for r in results if r["status"] == "rejected")
    assert "best:" in proc.stdout


def assert_selected_by_the_finalist_rule(recipe: dict[str, Any]) -> None:
    """The product's rule (optimizer/select.py select_finalist): among the re-measured finalists,
    the best feasible mean wins; another wins only on a tie, with a mean inside the top mean's 95%
    interval and more latency headroom, by more than HEADROOM_TIE_MARGIN. The selection evidence
    lists the winner first."""
    winner, *others = recipe["evidence"]["selection"]["finalists"]
    assert winner["label"] == Candidate.from_dict(recipe["settings"]).label()
    assert winner["feasible"]
    feasible = [f for f in others if f["feasible"]]
    assert feasible  # the test's loose SLO: every finalist meets it
    top = max(feasible, key=lambda f: f["goodput_tokens_per_joule"]["mean"])
    won, best = winner["goodput_tokens_per_joule"], top["goodput_tokens_per_joule"]
    # no feasible finalist is distinguishably better: the top mean's interval is not wholly above
    assert best["ci95"][0] <= won["ci95"][1]
    if best["mean"] > won["mean"]:  # chosen on a tie: inside the interval, with more headroom
        assert won["mean"] >= best["ci95"][0]
        # (> before the evidence's rounding to 3 places)
        assert winner["latency_headroom"] >= (top["latency_headroom"] or 0.0) + HEADROOM_TIE_MARGIN - 0.001


def test_selected_is_the_best_re_measured_finalist(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = first_run
    assert_selected_by_the_finalist_rule(yaml.safe_load((root / "run1" / "recipe.yaml").read_text()))


def test_verify_passes_on_the_recipe(
    first_run: tuple[Path, subprocess.CompletedProcess[str]], cache_dir: Path
) -> None:
    root, _ = first_run
    proc = optimize("verify", str(root / "run1" / "recipe.yaml"), "--tolerance", "0.5", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "PASSED" in proc.stdout


def test_rerun_repeats_nothing(
    first_run: tuple[Path, subprocess.CompletedProcess[str]], cache_dir: Path
) -> None:
    root, _ = first_run
    store = root / "trials.db"
    rows_before = len(stored(store, finalists=True))
    proc = optimize(*run_args(root / "run2"), cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(stored(store, finalists=True)) == rows_before  # nothing new, not even a finalist round
    progress = [line for line in proc.stderr.splitlines() if "] torch " in line]
    assert progress and all("(stored)" in line for line in progress)
    assert (root / "run2" / "recipe.yaml").is_file()


def test_killed_search_resumes_without_redoing_finished(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "killed"
    store = tmp_path / "trials.db"
    env = os.environ | {"WATTSMITH_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimizer", *run_args(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 600
    while time.time() < deadline and len(stored(store)) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = stored(store)
    assert len(finished) >= 2
    done_labels = {r["result"]["label"] for r in finished}
    resumed = optimize(*run_args(tmp_path / "resumed"), cache=cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    progress = [line for line in resumed.stderr.splitlines() if "] torch " in line]
    for label in done_labels:
        lines = [line for line in progress if label in line]
        assert lines and all("(stored)" in line for line in lines), label
    labels = [r["result"]["label"] for r in stored(store)]
    assert len(labels) == len(set(labels))  # each candidate measured once in all


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["model=/no/such/model"], "model.source"),
        (["space=nope"], "space"),
        (["space.batch_sizes=[1,"], "space.batch_sizes"),
        (["workload.repeats=0"], "workload.repeats"),
        (["quality.max_kl=-1"], "quality.max_kl"),
        (["output_dir=/proc/wattsmith-cannot-write"], "output_dir"),
    ],
)
def test_bad_input_exits_2_with_the_field(
    args: list[str], field: str, tmp_path: Path, cache_dir: Path
) -> None:
    proc = optimize(
        f"output_dir={tmp_path / 'run'}",
        f"store_path={tmp_path / 't.db'}",
        *args,
        cache=cache_dir,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"error: {field}" in proc.stderr
    assert "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_impossible_slo_exits_2_and_still_reports(tmp_path: Path, cache_dir: Path) -> None:
    args = [*run_args(tmp_path / "run"), "space.torch.precisions=[fp32]", "space.torch.quantizations=[none]"]
    proc = optimize(*args, "workload.slo.tpot_ms=0.001", cache=cache_dir)
    assert proc.returncode == 2
    assert "error: workload.slo" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "report.md").is_file()
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_verify_rejects_a_corrupt_recipe(tmp_path: Path, cache_dir: Path) -> None:
    bad = tmp_path / "recipe.yaml"
    bad.write_text("schema: wattsmith.recipe/v1\nsettings: [not, a, mapping\n")
    proc = optimize("verify", str(bad), cache=cache_dir)
    assert proc.returncode == 2
    assert "error: recipe" in proc.stderr and "Traceback" not in proc.stderr


def test_load_recipe_builds_an_engine_that_generates(
    first_run: tuple[Path, subprocess.CompletedProcess[str]], cache_dir: Path
) -> None:
    root, _ = first_run
    code = (
        "import sys, torch, optimizer\n"
        "engine = optimizer.load_recipe(sys.argv[1])\n"
        "gen = engine.generate(torch.tensor([[1, 2, 3, 4]]), 5)\n"
        "print(gen.new_tokens, gen.batch_size)\n"
    )
    env = os.environ | {"WATTSMITH_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root / "run1" / "recipe.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["5", "1"]


def test_optuna_search_finds_a_feasible_best_within_its_budget(tmp_path: Path, cache_dir: Path) -> None:
    args = [
        *SMALL,
        "space.batch_sizes=[1,4,8]",  # 12 candidates: {fp32, bf16} x {none, int8-dynamic} x 3 batches
        "search=optuna",
        "search.max_candidates=4",
        f"output_dir={tmp_path / 'run'}",
        f"store_path={tmp_path / 'trials.db'}",
    ]
    proc = optimize(*args, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recipe["evidence"]["search"]["sampler"] == "optuna"
    rows = stored(tmp_path / "trials.db")
    built = [r for r in rows if r["status"] != "rejected" or r["result"]["build_seconds"] > 0]
    assert len(built) <= 4  # the candidate budget held; rejections by known quality are free
    assert len({r["candidate_key"] for r in rows}) == len(rows)  # nothing evaluated twice
    report = (tmp_path / "run" / "report.md").read_text()
    assert "sampler optuna (tpe), 1 worker(s) (local)" in report
    counts = re.search(
        r"measured (\d+) \(feasible (\d+)\), rejected by the quality bound (\d+), failed (\d+), pruned (\d+), "
        r"excluded by rules (\d+), not reached \(budget, search.max_candidates or search.patience\) (\d+)",
        report,
    )
    assert counts is not None, report
    measured, feasible, rejected, failed, pruned, excluded, not_reached = map(int, counts.groups())
    assert feasible >= 1 and measured >= feasible
    assert measured + rejected + failed + pruned + not_reached == 12
    assert not_reached > 0  # the budget cut the search short of the grid
    assert recipe["settings"]["backend"] == "torch" and "best:" in proc.stdout
