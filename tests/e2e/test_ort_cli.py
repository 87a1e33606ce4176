"""One `optimize` run that measures PyTorch and ONNX Runtime candidates on the packaged SmolLM2,
then a recipe that names an ORT candidate, verified and rebuilt from the cache and from scratch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_support import optimize, stored

pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai (pip install 'wattsmith[ort]')")
pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript (pip install 'wattsmith[ort]')")

# torch fp32 and a torch int8-dynamic that the bound rejects; genai fp32/int8/int4 and an int4
# option set whose build exits 0 but does not load; our ONNX export in fp32; threads and batch.
SMALL_ORT = [
    "space=cpu-ort",
    "search=grid",  # every candidate (search=auto would stop a space this size early by patience)
    "workload=quick",
    "workload.min_window_seconds=0.5",
    "workload.repeats=2",
    "workload.idle_seconds=0.5",
    "quality.num_sequences=4",
    "space.batch_sizes=[1,4]",
    "space.threads=[1,0]",
    "space.torch.precisions=[fp32]",
    "space.torch.quantizations=[none,int8-dynamic]",
    "space.ort_genai.precisions=[fp32,int8,int4]",
    "space.ort_genai.algorithms=[default]",
    "space.ort_genai.int8_lm_head=[false,true]",
    "space.ort_onnx.quantizations=[none]",
]


@pytest.fixture(scope="session")
def search(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("ort-search")
    proc = optimize(
        *SMALL_ORT, f"output_dir={root / 'run1'}", f"store_path={root / 'trials.db'}", cache=cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (root / "run1" / "stderr.txt").write_text(proc.stderr)
    return root


def _results(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_one_run_measures_torch_and_ort_candidates(search: Path) -> None:
    results = _results(search / "run1")
    measured = {r["candidate"]["backend"] for r in results if r["status"] == "measured"}
    assert measured == {"torch", "ort-genai", "ort-onnx"}
    genai = [r["candidate"] for r in results if r["candidate"]["backend"] == "ort-genai"]
    assert {c["precision"] for c in genai} == {"fp32", "int8", "int4"}
    assert {c["batch_size"] for c in genai} == {1, 4}
    assert {c["threads"] for c in genai} == {1, len(os.sched_getaffinity(0))}  # threads 0 = all cores
    report = (search / "run1" / "report.md").read_text()
    assert "## Backends side by side" in report
    for backend in ("torch", "ort-genai", "ort-onnx"):
        assert f"\n| {backend} | " in report


def test_the_bound_rejects_int4_with_its_numbers(search: Path) -> None:
    results = _results(search / "run1")
    int4 = [
        r
        for r in results
        if r["candidate"]["backend"] == "ort-genai"
        and r["candidate"]["precision"] == "int4"
        and not r["candidate"]["int8_lm_head"]
    ]
    assert int4 and all(r["status"] == "rejected" and r["performance"] is None for r in int4)
    quality = int4[0]["quality"]
    assert quality["top1_agreement"] < 0.95 and quality["ppl_increase"] > 0.03  # SmolLM2 int4: ~63%, ~+35%
    assert "quality.min_top1_agreement" in int4[0]["reason"]
    stderr = (search / "run1" / "stderr.txt").read_text()
    assert "ort-genai int4 default g32 acc4 b1" in stderr and "REJECTED: ppl +" in stderr


def test_a_build_that_does_not_load_is_a_failed_candidate(search: Path) -> None:
    results = _results(search / "run1")
    broken = [
        r for r in results if r["candidate"]["backend"] == "ort-genai" and r["candidate"]["int8_lm_head"]
    ]
    assert broken and all(r["status"] == "failed" for r in broken)
    assert "GenaiBuildError: onnxruntime-genai cannot load" in broken[0]["reason"]
    assert "lm_head.MatMul.weight_Q8G32" in broken[0]["reason"]


@pytest.fixture(scope="session")
def ort_recipe(search: Path, cache_dir: Path) -> Path:
    """The same search restricted to ort-genai: every result comes from the store, the recipe is ORT."""
    store = search / "trials.db"
    rows = len(stored(store))
    run = search / "run2"
    args = [*SMALL_ORT, "space.backends=[ort-genai]", f"output_dir={run}", f"store_path={store}"]
    proc = optimize(*args, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(stored(store)) == rows  # nothing measured again
    return run / "recipe.yaml"


def test_the_recipe_names_an_ort_candidate(ort_recipe: Path) -> None:
    recipe = yaml.safe_load(ort_recipe.read_text())
    settings = recipe["settings"]
    assert settings["backend"] == "ort-genai" and settings["precision"] in ("fp32", "int8")
    assert recipe["target"]["packages"]["onnxruntime-genai"]
    assert recipe["evidence"]["quality"]["top1_agreement"] >= 0.95


def _build_files(cache_dir: Path) -> dict[Path, int]:
    """Every file of the cached genai builds, with its modification time."""
    return {p: p.stat().st_mtime_ns for p in (cache_dir / "ort-genai").rglob("*") if p.is_file()}


def test_verify_rebuilds_the_ort_recipe(ort_recipe: Path, cache_dir: Path) -> None:
    builds = sorted((cache_dir / "ort-genai").iterdir())
    files = _build_files(cache_dir)
    proc = optimize("verify", str(ort_recipe), "--tolerance", "0.5", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "PASSED" in proc.stdout
    assert sorted((cache_dir / "ort-genai").iterdir()) == builds  # rebuilt from the build cache
    assert _build_files(cache_dir) == files  # ... reused as they were, not built again in place


LOAD = (
    "import sys, torch, optimizer\n"
    "engine = optimizer.load_recipe(sys.argv[1])\n"
    "gen = engine.generate(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), 5)\n"
    "print(type(engine).__name__, gen.batch_size, gen.new_tokens, tuple(gen.token_ids.shape))\n"
)


@pytest.mark.parametrize("fresh", [False, True], ids=["from-cache", "from-scratch"])
def test_load_recipe_rebuilds_the_ort_engine(
    ort_recipe: Path, cache_dir: Path, tmp_path: Path, fresh: bool
) -> None:
    cache = tmp_path / "fresh-cache" if fresh else cache_dir
    env = os.environ | {"WATTSMITH_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(ort_recipe)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-5:] == ["OrtGenaiEngine", "2", "5", "(2,", "5)"]
    if fresh:
        assert len(list((cache / "ort-genai").glob("*/genai_config.json"))) == 1  # built from scratch
