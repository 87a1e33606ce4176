"""Helpers of the e2e tests: run the `optimize` CLI in a subprocess, read the SQLite store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

# A one-candidate-per-layout offline search on the packaged model, short windows: the layout e2e
# tests add their `space.replicas` / `space.tensor_parallel` / `launcher` to it.
LAYOUT_SEARCH = [
    "workload=quick",
    "space=cpu-batch",
    "workload.min_window_seconds=0.3",
    "workload.repeats=1",
    "workload.idle_seconds=0",
    "space.batch_sizes=[2]",
    "space.threads=[1]",
    "space.torch.precisions=[fp32]",
    "space.torch.quantizations=[none]",
    "quality.num_sequences=2",
    "workload.slo.tpot_ms=5000",
]


def optimize(*args: str, cache: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WATTSMITH_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def stored(path: Path, finalists: bool = False) -> list[dict[str, Any]]:
    """Every row of the store, read with the standard library; the finalists' rounds (each in a
    context of its own) only when asked for."""
    if not path.exists():
        return []
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute("SELECT * FROM wattsmith_trials ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
    every = [dict(row) | {"result": json.loads(row["result"])} for row in rows]
    return [r for r in every if finalists or r["result"].get("role") != "finalist"]
