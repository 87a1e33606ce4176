"""`make install` keeps an installed GPU build of the pinned llama-cpp-python: build.py installed
its CPU wheel with --force-reinstall over whatever was there, so the CUDA build docs/backends.md
has a GPU target install was replaced, and every llama.cpp candidate on the GPU was excluded."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
from pathlib import Path

import pytest

from optimizer.backends.llamacpp import build

PIN = build.pinned_requirement()
VERSION = PIN.partition("==")[2]


def installed(monkeypatch: pytest.MonkeyPatch, version: str | None, probe_says: str) -> list[list[str]]:
    """llama-cpp-python `version` installed (None: none), its GPU probe printing `probe_says`;
    returns the commands main() runs, pip's included (faked: a wheel in pip wheel's -w)."""
    commands: list[list[str]] = []

    def metadata_version(name: str) -> str:
        if version is None or name != "llama-cpp-python":
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "wheel" in command:
            out = Path(command[command.index("-w") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_text("")
        return subprocess.CompletedProcess(command, 0, stdout=probe_says if "-c" in command else None)

    monkeypatch.setattr(importlib.metadata, "version", metadata_version)
    monkeypatch.setattr(build.subprocess, "run", run)
    monkeypatch.setattr(build, "this_machine_cmake_args", lambda cache, amx=True: ("-DGGML_NATIVE=OFF", ""))
    return commands


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if "install" in c]


def test_make_install_keeps_a_gpu_build_of_the_pinned_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.delenv("LLAMACPP_CMAKE_ARGS", raising=False)
    commands = installed(monkeypatch, VERSION, "gpu_offload True\n")
    assert build.main(["build.py"]) == 0
    assert pip_installs(commands) == [] and not any("wheel" in c for c in commands)  # before: replaced
    assert (
        f"keeping the installed llama-cpp-python {VERSION}: it offloads to a GPU" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("version", "probe_says"),
    [(VERSION, "gpu_offload False\n"), ("0.3.1", "gpu_offload True\n"), (None, ""), (VERSION, "")],
)
def test_a_cpu_build_another_version_or_none_is_replaced_by_ours(
    version: str | None, probe_says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A probe that printed nothing: the library did not load.)"""
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.delenv("LLAMACPP_CMAKE_ARGS", raising=False)
    commands = installed(monkeypatch, version, probe_says)
    assert build.main(["build.py"]) == 0
    assert len(pip_installs(commands)) == 1 and "--force-reinstall" in pip_installs(commands)[0]


def test_named_flags_build_whatever_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", "-DGGML_NATIVE=OFF -DGGML_CUDA=on")
    commands = installed(monkeypatch, VERSION, "gpu_offload True\n")
    assert build.main(["build.py"]) == 0
    assert len(pip_installs(commands)) == 1


def test_the_decision_and_what_it_says() -> None:
    assert build.keep_installed(PIN, None, False) == (False, "")
    assert build.keep_installed(PIN, VERSION, False) == (False, "")  # a CPU build: ours is the same, tuned
    keep, line = build.keep_installed(PIN, VERSION, True)
    assert keep and "pip uninstall llama-cpp-python" in line
    keep, line = build.keep_installed(PIN, "0.3.1", True)
    assert not keep and "replacing the installed llama-cpp-python 0.3.1, a GPU build" in line
    assert f"-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir {PIN}" in line


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_the_probe_reads_the_installed_library() -> None:
    version, gpu = build.installed_llamacpp()
    assert version == importlib.metadata.version("llama-cpp-python")
    import llama_cpp.llama_cpp as bindings

    assert gpu == bool(bindings.llama_supports_gpu_offload())
