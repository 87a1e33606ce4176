"""The llama.cpp wheel is compiled beside its cache entry and renamed into it: a build that failed
or was killed leaves nothing the next build takes in, and two builds at once (two venvs, one
cache) each write their own copy.

Before, every build wrote into the one `<key>.partial`: a failed build left it, the next build's
pip wrote into it and renamed it, with whatever was there, into the cache; and of two concurrent
builds the second's rename failed on the first's finished entry (OSError: make install failed)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from optimizer.backends.llamacpp import build
from optimizer.processes import host_tag

ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"  # PyPI's source, no patch
WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"

Pip = Callable[[Path], None]  # what `pip wheel -w <folder>` does to the folder


def run_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pip_wheel: Pip) -> list[list[str]]:
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "wheel" in command:
            pip_wheel(Path(command[command.index("-w") + 1]))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(build.subprocess, "run", run)
    monkeypatch.setattr(build, "installed_llamacpp", lambda: (None, False), raising=False)
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", ARGS)
    assert build.main(["build.py"]) == 0
    return commands


def entry(tmp_path: Path) -> Path:
    return build.wheel_dir(build.pinned_requirement(), ARGS, tmp_path)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def writes_a_wheel(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)  # pip's -w: made if missing, written into if there
    (out / WHEEL).write_text("new")


def test_what_a_dead_build_left_is_removed_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = entry(tmp_path)
    legacy = wheels.with_name(wheels.name + ".partial")  # this file's name for it before pids
    dead = wheels.with_name(f"{wheels.name}.tmp-{dead_pid()}-{host_tag()}")
    running = wheels.with_name(f"{wheels.name}.tmp-{os.getppid()}-{host_tag()}")  # another build, alive
    for folder in (legacy, dead, running):
        folder.mkdir(parents=True)
        (folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl.part").write_text("killed mid-copy")
    commands = run_main(tmp_path, monkeypatch, writes_a_wheel)
    assert sorted(p.name for p in wheels.iterdir()) == [WHEEL]  # before: the dead build's file came along
    assert not legacy.exists() and not dead.exists()
    assert running.exists()  # a build in progress keeps its copy
    assert commands[-1][-1] == str(wheels / WHEEL)


def test_a_failed_build_leaves_nothing_beside_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        raise subprocess.CalledProcessError(1, ["pip", "wheel"])

    with pytest.raises(subprocess.CalledProcessError):
        run_main(tmp_path, monkeypatch, fails)
    assert list((tmp_path / "wheels").iterdir()) == []  # before: `<key>.partial`


def test_a_build_that_another_finished_first_installs_that_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = entry(tmp_path)

    def another_build_finishes_first(out: Path) -> None:
        writes_a_wheel(out)
        wheels.mkdir(parents=True)
        (wheels / WHEEL).write_text("theirs")

    commands = run_main(tmp_path, monkeypatch, another_build_finishes_first)
    assert commands[-1][-1] == str(wheels / WHEEL) and (wheels / WHEEL).read_text() == "theirs"
    assert [p.name for p in wheels.parent.iterdir()] == [wheels.name]  # ours removed
