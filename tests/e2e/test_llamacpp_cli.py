"""`optimize` with llama.cpp candidates on the packaged SmolLM2 GGUF: offline batches with a
requantized type that the quality bound rejects and a setting a rule excludes, then the recipe
verified and rebuilt; and a short agent stream served through llama.cpp's batch API with prefix
reuse on and off."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_support import optimize

from optimizer.backends.artifacts import PROVENANCE

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")

SMALL = [
    "space=cpu-llamacpp",
    "workload=quick",
    "workload.min_window_seconds=0.5",
    "workload.repeats=2",
    "workload.idle_seconds=0.5",
    "quality.num_sequences=4",
    "workload.slo.tpot_ms=2000",  # the mechanics, not this machine's speed
    "space.batch_sizes=[1,4]",
    "space.llamacpp.weight_types=[gguf,Q4_0]",
    "space.llamacpp.kv_types=[f16]",
    # a quantized V cache without flash attention: excluded by a rule, never built
    "space.extra=[{backend:llamacpp,batch_size:4,kv_type:q8_0,flash_attention:false}]",
]
LOAD = (
    "import sys, torch, optimizer\n"
    "engine = optimizer.load_recipe(sys.argv[1], request_tokens=600)\n"
    "gen = engine.generate(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), 5)\n"
    "print(type(engine).__name__, engine.settings.label(), engine.sequences, tuple(gen.token_ids.shape),\n"
    "      engine.sequence_tokens)\n"
    "engine.close()\n"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("llamacpp")
    proc = optimize(*SMALL, f"output_dir={root / 'run'}", f"store_path={root / 'trials.db'}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "run"


def _results(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_llamacpp_candidates_are_measured_rejected_and_excluded(run: Path, cache_dir: Path) -> None:
    results = [r for r in _results(run) if r["candidate"]["backend"] == "llamacpp"]
    measured = [r for r in results if r["status"] == "measured"]
    assert {(r["candidate"]["weight_type"], r["candidate"]["batch_size"]) for r in measured} == {
        ("gguf", 1),
        ("gguf", 4),
    }
    assert all(r["performance"]["tokens_per_second"]["mean"] > 0 for r in measured)
    q4 = [r for r in results if r["candidate"]["weight_type"] == "Q4_0"]
    assert q4 and all(r["status"] == "rejected" and "top-1" in r["reason"] for r in q4)
    # the file the probed engine served, as built into the cache (the other batch size was rejected
    # on the stored probe, unbuilt); the packaged GGUF served as shipped is the model's own weights
    served = [r["artifact"] for r in q4 if r["artifact"]]
    assert len(served) == 1 and served[0]["what"] == "llama.cpp Q4_0 weights"
    (built,) = [
        path / "model.gguf"
        for path in cache_dir.glob("llamacpp/*")
        if (path / PROVENANCE).is_file()
        and json.loads((path / PROVENANCE).read_text())["what"] == served[0]["what"]
    ]
    assert served[0]["files"] == {"model.gguf": hashlib.sha256(built.read_bytes()).hexdigest()}
    assert all(r["artifact"] is None for r in measured)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["settings"]["backend"] == "llamacpp" and recipe["settings"]["weight_type"] == "gguf"
    report = (run / "report.md").read_text()
    assert "only with flash attention" in report


def test_the_recipe_verifies_and_rebuilds_the_same_engine(run: Path, cache_dir: Path, tmp_path: Path) -> None:
    proc = optimize("verify", str(run / "recipe.yaml"), "--tolerance", "0.9", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "PASSED" in proc.stdout
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    deployment = tmp_path / "deployment-cache"  # a machine that only serves the recipe
    env = os.environ | {"WATTSMITH_CACHE": str(deployment)}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, str(run / "recipe.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    name, *_, shape = loaded.stdout.strip().splitlines()[-1].split(" (")
    # engine, settings label ("gguf": f16 KV, flash attention, 512/512 batches), sequences; its
    # context made for 600-token requests before any is submitted (in 256-token granules)
    assert name == f"LlamaCppEngine gguf {recipe['settings']['batch_size']}"
    assert shape == "2, 5) 768"
    assert not (deployment / "models").exists()  # llama.cpp serves the GGUF: nothing de-quantized


def test_an_agent_stream_is_served_with_and_without_prefix_reuse(tmp_path: Path, cache_dir: Path) -> None:
    args = [
        "space=cpu-llamacpp",
        "workload=agent",
        "workload.requests=12",
        "workload.turns=3",
        "workload.turn_gap_seconds=2",
        "workload.shared_prefix_tokens=128",
        "workload.rate=1.5",
        "workload.repeats=1",
        "workload.warmup_requests=2",
        "workload.drain_requests=2",
        "workload.idle_seconds=0.5",
        "workload.prompt_lengths.mean=48",
        "workload.prompt_lengths.max=96",
        "workload.output_lengths.mean=12",
        "workload.output_lengths.min=4",
        "workload.output_lengths.max=24",
        # the mechanics of a stream, not this machine's speed (other processes may share its cores)
        "workload.slo.ttft_ms=20000",
        "workload.slo.tpot_ms=2000",
        "quality.num_sequences=2",
        "space.batch_sizes=[4]",
        "space.llamacpp.weight_types=[gguf]",
        "space.llamacpp.kv_types=[q8_0]",
        "space.llamacpp.prefix_sharing=[true,false]",
    ]
    run = tmp_path / "agent"
    proc = optimize(*args, f"output_dir={run}", f"store_path={tmp_path / 'trials.db'}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["settings"]["backend"] == "llamacpp" and recipe["settings"]["kv_type"] == "q8_0"
    assert recipe["evidence"]["serving"]["rate"] == 1.5
    report = (run / "report.md").read_text()
    assert "## Serving the stream" in report and "### Prefix KV reuse" in report
    reuse_table = report.split("### Prefix KV reuse", 1)[1]
    row = next(line for line in reuse_table.splitlines() if line.startswith("| llamacpp"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    hits, lookups = (float(x) for x in cells[7].split("/"))
    assert 0 < hits <= lookups and cells[6] != "0%"  # prompt tokens reused


def test_a_gguf_searched_against_itself_is_never_dequantized(tmp_path: Path) -> None:
    """`quality.reference=gguf`: the reference and the baseline are the GGUF as shipped in
    llama.cpp, so a search and its verify run where the fp32 copy would not fit: none is written."""
    cache = tmp_path / "cache"  # not the shared cache: an earlier test's conversion would be found there
    args = [*SMALL[:-3], "space.llamacpp.weight_types=[gguf,Q8_0]", "space.llamacpp.kv_types=[f16]"]
    run = tmp_path / "run"
    proc = optimize(
        *args, "quality.reference=gguf", f"output_dir={run}", f"store_path={tmp_path / 't.db'}", cache=cache
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "quality reference: the GGUF as shipped (llama.cpp)" in proc.stderr
    assert "baseline llamacpp gguf b1" in proc.stderr
    results = _results(run)
    shipped = [r for r in results if r["candidate"]["weight_type"] == "gguf"]
    assert shipped and all(
        r["quality"]["mean_kl"] == 0 and r["quality"]["top1_agreement"] == 1 for r in shipped
    )
    requantized = [r for r in results if r["candidate"]["weight_type"] == "Q8_0" and r["quality"]]
    assert requantized and all(r["quality"]["mean_kl"] > 0 for r in requantized)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["measurement"]["quality"]["reference"] == "gguf"
    assert "vs the GGUF as shipped (llama.cpp)" in (run / "report.md").read_text()
    verified = optimize("verify", str(run / "recipe.yaml"), "--tolerance", "0.9", cache=cache)
    assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
    assert "PASSED" in verified.stdout
    assert not (cache / "models").exists()
