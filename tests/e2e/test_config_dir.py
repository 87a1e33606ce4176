"""`optimize --config-dir`: a model repository's own presets, through the real command (no measuring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def optimize(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ | (env or {}),
        timeout=300,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository carrying conf/ next to its recipes."""
    (tmp_path / "conf" / "workload").mkdir(parents=True)
    (tmp_path / "conf" / "workload" / "mine.yaml").write_text("max_new_tokens: 7\n")
    (tmp_path / "recipes").mkdir()
    return tmp_path


def test_config_dir_flag_variable_help_and_errors(repo: Path) -> None:
    shown = optimize("--config-dir", "conf", "workload=mine", "--show-config", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["workload"]["max_new_tokens"] == 7

    from_env = optimize("workload=mine", "--show-config", cwd=repo, env={"WATTSMITH_CONFIG_DIR": "conf"})
    assert from_env.returncode == 0, from_env.stderr
    assert yaml.safe_load(from_env.stdout)["workload"]["max_new_tokens"] == 7

    helped = optimize("--config-dir", "conf", "--help", cwd=repo)
    assert helped.returncode == 0 and "mine (yours)" in helped.stdout

    unknown = optimize("--config-dir", "conf", "workload=nope", cwd=repo)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: workload: no preset named 'nope'")
    assert "'mine'" in unknown.stderr and "'quick'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    missing = optimize("--config-dir", "nope", "--show-config", cwd=repo)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --config-dir: ") and "Traceback" not in missing.stderr
