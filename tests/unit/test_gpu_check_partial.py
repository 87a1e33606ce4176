"""evals/gpu_check.py keeps what a GPU call measured when a section is killed past its time
limit's grace, and gives the 8B bf16 rows their bf16 Linears back after the fp8 row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from optimizer.backends.torch.fp8_static import Float8StaticLinear
from optimizer.store import TrialStore

from .test_gpu_check_plan import load_gpu_check


def test_a_section_killed_before_its_json_leaves_the_rows_stored_so_far(
    tmp_path: Path, make_result, make_candidate
) -> None:
    gpu_check = load_gpu_check()
    store_path, file = tmp_path / "trials.db", tmp_path / "serving.json"
    started = time.time()
    stop = gpu_check.write_partial_rows(file, ["a=b"], store_path, started, every_seconds=0.05)
    try:
        store = TrialStore(store_path, "ctx")
        store.append(make_result(make_candidate(batch_size=4)))
        deadline = time.time() + 10
        while not (file.is_file() and json.loads(file.read_text())["rows"]) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop()
    data = json.loads(file.read_text())
    assert data["interrupted"] == "killed" and data["overrides"] == ["a=b"]
    assert [row["status"] for row in data["rows"]] == ["measured"]
    file.write_text("{}")  # the section's own JSON, written after stop(): never overwritten
    time.sleep(0.2)
    assert file.read_text() == "{}"


def test_the_linears_an_fp8_row_replaced_are_put_back() -> None:
    gpu_check = load_gpu_check()
    linears = (torch.nn.Linear(32, 32), torch.nn.Linear(32, 16))
    model = torch.nn.Sequential(linears[0], torch.nn.Sequential(linears[1])).to(torch.bfloat16)
    kept = gpu_check.linear_modules(model)
    assert set(kept) == {"0", "1.0"}
    model[1][0] = Float8StaticLinear.from_linear(model[1][0], 1.0, 1.0, False)
    assert gpu_check.fp8_linear_count(model) == 1
    gpu_check.put_back_modules(model, kept)
    assert gpu_check.fp8_linear_count(model) == 0 and model[1][0] is kept["1.0"]


def test_the_tests_plugin_prints_a_failure_when_it_happens(tmp_path: Path) -> None:
    """Before pytest's closing summary, which a run killed in a slow teardown never prints."""
    (tmp_path / "test_x.py").write_text(
        "import os\n\ndef test_fails():\n    assert 1 == 2, 'boom'\n\n"
        "def test_killed():\n    os._exit(1)  # killed before the summary\n"
    )
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "evals.instant_failures",
            "test_x.py",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(repo), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--- FAILED test_x.py::test_fails (call)" in run.stdout and "AssertionError: boom" in run.stdout
    assert "short test summary" not in run.stdout  # the summary never came: the traceback did
