"""Cached build artifacts: complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.backends.artifacts import (
    PROVENANCE,
    artifact_files,
    artifact_key,
    artifacts_used,
    cached_artifact,
    served_artifact,
)
from optimizer.processes import host_tag


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


def test_the_provenance_lists_each_built_files_sha256(tmp_path: Path) -> None:
    def build(tmp: Path) -> dict:
        (tmp / "model.onnx").write_bytes(b"graph")
        (tmp / "weights").mkdir()
        (tmp / "weights" / "data.bin").write_bytes(b"\x00\x01")
        return {}

    out = cached_artifact(tmp_path / "a", build, "test model")
    files = json.loads((out / PROVENANCE).read_text())["files"]
    assert files == {  # as `sha256sum` says of each file; the provenance itself is not content
        "model.onnx": hashlib.sha256(b"graph").hexdigest(),
        "weights/data.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
    }
    assert artifact_files(out) == files


def test_a_build_made_before_digests_were_recorded_is_hashed_and_completed(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "model.gguf").write_bytes(b"gguf")
    (out / PROVENANCE).write_text(json.dumps({"what": "old weights", "seconds": 1.0}))
    assert artifact_files(out) == {"model.gguf": hashlib.sha256(b"gguf").hexdigest()}
    recorded = json.loads((out / PROVENANCE).read_text())
    assert recorded["what"] == "old weights" and recorded["files"] == artifact_files(out)


def test_the_served_artifact_is_the_last_one_an_engine_build_used(tmp_path: Path) -> None:
    """An engine's intermediates come first: an export built inside its engine's build too."""

    def export(tmp: Path) -> dict:
        (tmp / "model.onnx").write_text("fp32")
        return {}

    def engine(tmp: Path) -> dict:
        cached_artifact(tmp_path / "export", export, "export")
        (tmp / "model.plan").write_text("engine")
        return {}

    cached_artifact(tmp_path / "elsewhere", export, "not collected: outside any block")
    with artifacts_used() as used:
        cached_artifact(tmp_path / "engine", engine, "engine")
    assert used == [tmp_path / "export", tmp_path / "engine"]
    assert served_artifact(used) == {
        "what": "engine",
        "files": {"model.plan": hashlib.sha256(b"engine").hexdigest()},
    }
    with artifacts_used() as reused:  # built already: reused, and collected the same way
        cached_artifact(tmp_path / "engine", engine, "engine")
    assert reused == [tmp_path / "engine"]
    with artifacts_used() as none:
        pass
    assert served_artifact(none) is None  # an engine on the model's own weights


_KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from optimizer.backends.artifacts import cached_artifact

def build(tmp):
    (tmp / "model.onnx").write_bytes(b"half-written")
    os.kill(os.getpid(), signal.SIGKILL)  # the out-of-memory killer: no except, no finally

cached_artifact(Path(sys.argv[1]), build, "export")
"""


@pytest.mark.parametrize("complete", [False, True])
def test_a_build_killed_outright_leaves_no_copy_for_good(tmp_path: Path, complete: bool) -> None:
    """A SIGKILLed build cleans nothing up: its `<out>.tmp-<pid>` (an export, a quantized model:
    GBs) stayed forever. The next use of the artifact, a build or a reuse, removes the copies of
    this host's processes that are gone, and keeps a live process's and another host's."""
    out = tmp_path / "onnx" / "fp32"
    killed = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(out)], cwd=Path(__file__).parents[3])
    assert killed.wait() == -9
    (dead,) = out.parent.iterdir()
    if complete:  # another process completed it meanwhile: a reuse must remove the copy too
        cached_artifact(out, _writer([]), "export")
        dead.mkdir(exist_ok=True)
    kept = [f"fp32.tmp-{os.getppid()}-{host_tag()}", f"fp32.tmp-{killed.pid}-other-host", "fp16.tmp-1"]
    old = f"fp32.tmp-{killed.pid}"  # named before names carried a host: taken as this host's
    for name in [*kept, old]:
        (out.parent / name).mkdir(exist_ok=True)
    cached_artifact(out, _writer([]), "export")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["fp32", *kept])
    assert dead.name == f"fp32.tmp-{killed.pid}-{host_tag()}"  # two hosts sharing a cache: two names
