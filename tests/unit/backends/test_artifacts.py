"""Cached build artifacts: complete or absent, never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.backends.artifacts import PROVENANCE, artifact_key, cached_artifact


def _writer(calls: list[Path], content: str = "model"):
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "model.onnx").write_text(content)
        return {"source": "test"}

    return build


def test_built_once_then_reused(tmp_path: Path) -> None:
    calls: list[Path] = []
    out = tmp_path / "a" / "fp32"
    assert cached_artifact(out, _writer(calls), "test model") == out
    assert cached_artifact(out, _writer(calls, "other"), "test model") == out
    assert len(calls) == 1 and calls[0] != out  # built aside, then moved into place
    assert (out / "model.onnx").read_text() == "model"
    provenance = json.loads((out / PROVENANCE).read_text())
    assert provenance["what"] == "test model" and provenance["source"] == "test"
    assert [p.name for p in out.parent.iterdir()] == ["fp32"]


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> dict:
        (tmp / "half.onnx").write_text("x")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cached_artifact(tmp_path / "b", fail, "test model")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_provenance_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "c"
    out.mkdir()
    (out / "model.onnx").write_text("stale")
    calls: list[Path] = []
    cached_artifact(out, _writer(calls), "test model")
    assert len(calls) == 1 and (out / "model.onnx").read_text() == "model"


def test_keys_are_stable_and_distinct() -> None:
    assert artifact_key({"a": 1, "b": [2]}) == artifact_key({"b": [2], "a": 1})
    assert artifact_key({"a": 1}) != artifact_key({"a": 2})
    assert len(artifact_key({})) == 16
