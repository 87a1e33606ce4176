"""load_recipe, the API a deployment calls, turns ONNX Runtime's telemetry off before any backend
imports onnxruntime (whose import alone writes a device id under ~/.cache/Microsoft), as optimize
and verify do; a value the user set is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer import recipe as recipe_module


class Stop(Exception):
    pass


def telemetry_setting_when_read(monkeypatch: pytest.MonkeyPatch) -> str | None:
    """ORT_DISABLE_TELEMETRY as load_recipe's first step (reading the recipe) sees it."""
    seen: list[str | None] = []

    def read(path: object) -> None:
        seen.append(os.environ.get("ORT_DISABLE_TELEMETRY"))
        raise Stop

    monkeypatch.setattr(recipe_module, "read_recipe", read)
    with pytest.raises(Stop):
        recipe_module.load_recipe("recipe.yaml")
    return seen[0]


def test_load_recipe_disables_onnx_runtime_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "")  # so that undoing it unsets what load_recipe sets
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY")
    assert telemetry_setting_when_read(monkeypatch) == "1"


def test_a_users_own_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    assert telemetry_setting_when_read(monkeypatch) == "0"


def test_onnx_runtime_writes_no_device_id_after_load_recipe(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'wattsmith[ort]')")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"))
    script = (
        "from optimizer import load_recipe\n"
        "from optimizer.errors import UserError\n"
        "try:\n"
        f"    load_recipe({str(tmp_path / 'missing.yaml')!r})\n"
        "except UserError:\n"
        "    pass\n"
        "import onnxruntime\n"  # as a backend would, building the engine
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert not (tmp_path / ".cache" / "Microsoft").exists()
