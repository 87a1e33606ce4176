"""The GPU check rehearsed on this CPU (`CPU_SMOKE=1 evals/gpu_check.sh all`, then `one qwen`
and `one profile`).

A session with a GPU has 15 device minutes for the one call that script makes: a section broken
by a change made in a session without one would spend them on a traceback. Here every section
runs the same code with tiny shapes; the numbers are not judged, only that each section measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("env", "profile", "qwen", "llama8b", "serving")


def test_every_section_of_the_one_call_runs(tmp_path: Path, cache_dir: Path) -> None:
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    carried = tmp_path / "carried"  # what gpu_carry.sh puts in .gpu/a, minus the wheels
    (carried / "tokenizer").mkdir(parents=True)
    for file in resolve_model(ModelConfig(source="smollm2"), cache_dir).path.glob("tokenizer*"):
        shutil.copy(file, carried / "tokenizer" / file.name)
    out = tmp_path / "out"
    env = os.environ | {
        "CPU_SMOKE": "1",
        "CARRIED": str(carried),
        "OUT": str(out),
        "STASH": str(tmp_path / "stash"),
        "WORK": str(tmp_path / "work"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # the GPU's limits fit 2 idle cores; a busy CI neighbour must not cut a search short (a
        # search ends when its candidates are done, so a quiet machine takes no longer)
        "SECONDS_QWEN": "240",
        "SECONDS_SERVING": "240",
    }
    # the one call, then follow-ups on the same machine
    for args in (["all"], ["one", "qwen"], ["one", "profile"]):
        run = subprocess.run(
            ["bash", str(REPO / "evals" / "gpu_check.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        if args == ["all"]:  # the install step's check of the carried wheels, once per machine
            assert "imports ok: transformers" in run.stdout
            # the device returns 8 files of $OUT at most: the rest travels in one archive
            files = sorted(path.name for path in out.iterdir())
            assert len(files) <= 8 and any(name.endswith(".tar.gz") for name in files), files
    sections = {name: json.loads((out / f"{name}.json").read_text()) for name in SECTIONS}
    errors = {name: data["error"] for name, data in sections.items() if "error" in data}
    assert not errors, errors

    assert sections["env"]["target"]["kind"] == "cpu"
    assert all("eager_step" in table for table in sections["profile"]["tables"].values())
    assert set(sections["profile"]["tables"]) == {"sdpa b4", "sdpa_gqa b4"}
    llama = sections["llama8b"]["rows"]
    assert [row["status"] for row in llama] == ["measured"] * 4, llama
    fp8 = [row for row in llama if "fp8" in row]
    assert len(fp8) == 1 and "Linear layers in fp8" in fp8[0]["fp8"]
    # the fp8 row quantizes the shared model in place: the bf16 rows after it get its Linears back
    assert [row["fp8_linears"] > 0 for row in llama] == [("fp8" in row) for row in llama], llama
    # the three loop rows (not the baseline) profiled after their measurement: step and prefill
    profiled = [row for row in llama if "profile" in row]
    assert [row["name"] for row in profiled] == [row["name"] for row in llama[1:]], llama
    for row in profiled:
        assert all(table["rows"] for table in row["profile"].values()), row["profile"]
    for name in ("qwen", "serving"):
        rows = sections[name]["rows"]
        assert sections[name]["best"] is not None, name
        backends = {row["settings"]["backend"] for row in rows if row["status"] in ("feasible", "measured")}
        assert backends == {"torch", "torch-cb"}, (name, rows)
    served = [row for row in sections["serving"]["rows"] if row["settings"].get("loop") == "slots"]
    assert [row["settings"].get("step_interval_ms", 0.0) for row in served] == [0.0, 20.0], served
    assert all(row["status"] in ("feasible", "measured") for row in served), served
    summary = (out / "summary.txt").read_text()
    assert "qwen: best =" in summary and "serving: best =" in summary and "llama8b" in summary
    assert summary.count("captured_step") == 3 and summary.count("      prefill") == 3, summary
