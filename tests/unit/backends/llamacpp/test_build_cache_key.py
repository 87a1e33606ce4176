"""build.py (run by `make install`): WATTSMITH_CACHE by the run config's rule, the wheel cache keyed by
platform, and a CUDA build of the pinned version kept where no GPU is visible.

Before: an empty WATTSMITH_CACHE was read as unset (the run config refuses it); the key had only the
version, flags and patch, so a cache shared with a machine of another arch or libc could hand over its
wheel; and a GPU build was kept only when llama_supports_gpu_offload() said true in a child, which is
false wherever ggml registers no GPU device (ggml_cuda_init: cudaGetDeviceCount fails, device_count 0),
e.g. an image built on a machine without a GPU."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from optimizer.backends.llamacpp import build
from optimizer.errors import UserError

BUILD_PY = Path(build.__file__)
ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"  # PyPI's source, no patch
PIN = build.pinned_requirement()
VERSION = PIN.partition("==")[2]
WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
CPU_BUILD_FILES = [
    "include/ggml-cuda.h",  # every build installs every backend's header
    "include/ggml-metal.h",
    "llama_cpp/lib/libllama.so",
    "llama_cpp/lib/libggml-cpu.so.0.25.3",
    "llama_cpp/lib/libggml-blas.so",
    "llama_cpp/lib/libggml-rpc.so",
]


def fake_pip(monkeypatch: pytest.MonkeyPatch, probe_says: str = "") -> list[list[str]]:
    """subprocess.run faked: `pip wheel -w DIR` writes a wheel there, the GPU probe prints `probe_says`;
    returns the commands run."""
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "wheel" in command:
            out = Path(command[command.index("-w") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / WHEEL).write_text("new")
        return subprocess.CompletedProcess(command, 0, stdout=probe_says if "-c" in command else None)

    monkeypatch.setattr(build.subprocess, "run", run)
    return commands


def installed_wheel(commands: list[list[str]]) -> Path:
    (install,) = [c for c in commands if "install" in c]
    return Path(install[-1])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_wattsmith_cache_is_refused_as_the_run_config_refuses_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WATTSMITH_CACHE", value)
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", ARGS)
    commands = fake_pip(monkeypatch)
    with pytest.raises(UserError, match="WATTSMITH_CACHE: is set but empty") as error:
        build.main(["build.py"])
    assert "unset WATTSMITH_CACHE" in error.value.fix
    assert commands == [] and list(tmp_path.iterdir()) == []  # before: built into ~/.cache or "  /"


@pytest.mark.parametrize(("value", "under"), [(None, ".cache/wattsmith"), ("~/elsewhere", "elsewhere")])
def test_unset_is_the_home_cache_and_a_tilde_is_home(
    value: str | None, under: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the run config's cache_dir (recipe.py expands it): "~/x" was a folder named "~" here."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("WATTSMITH_CACHE", raising=False)
    else:
        monkeypatch.setenv("WATTSMITH_CACHE", value)
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", ARGS)
    commands = fake_pip(monkeypatch)
    assert build.main(["build.py"]) == 0
    assert installed_wheel(commands).is_relative_to(tmp_path / "home" / under / "wheels")
    assert not (tmp_path / "~").exists()


def run_script(cache: str) -> subprocess.CompletedProcess[str]:
    """build.py as `make install` runs it, on the standard library only (-S: no site-packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"WATTSMITH_CACHE": cache, "LLAMACPP_CMAKE_ARGS": ARGS}
    return subprocess.run(
        [sys.executable, "-I", "-S", str(BUILD_PY), "--cmake-args"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_script_says_what_to_fix_on_the_standard_library_alone(tmp_path: Path) -> None:
    refused = run_script("")
    assert refused.returncode == 1, refused  # before: 0, the cache in ~/.cache/wattsmith
    assert "build.py: WATTSMITH_CACHE: is set but empty" in refused.stderr
    assert "fix: unset it" in refused.stderr and "Traceback" not in refused.stderr
    ran = run_script(str(tmp_path))
    assert ran.returncode == 0 and ran.stdout.strip() == ARGS, ran.stderr


@pytest.mark.parametrize(
    ("plat", "libc"),
    [
        ("linux-aarch64", None),  # `args` are "" on every non-x86 CPU: the flags alone collide
        (None, ("glibc", "2.17")),  # an older distribution's glibc
        (None, ("", "")),  # musl
    ],
)
def test_the_key_names_the_platform_and_libc(
    plat: str | None, libc: tuple[str, str] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = build.wheel_dir(PIN, ARGS, tmp_path)
    assert here == build.wheel_dir(PIN, ARGS, tmp_path)
    if plat:
        monkeypatch.setattr(sysconfig, "get_platform", lambda: plat)
    if libc:
        monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: libc)
    assert build.wheel_dir(PIN, ARGS, tmp_path) != here  # before: the same entry


def test_an_entry_keyed_without_the_platform_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared cache cannot tell which machine built an entry of the old keys: compiled once more."""
    old_key = hashlib.sha256(f"{PIN}\n{ARGS}".encode()).hexdigest()[:16]
    legacy = tmp_path / "wheels" / f"llama-cpp-python-{old_key}"
    legacy.mkdir(parents=True)
    (legacy / WHEEL).write_text("another machine's")
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", ARGS)
    commands = fake_pip(monkeypatch)
    assert build.main(["build.py"]) == 0
    assert any("wheel" in c for c in commands)  # before: none, the legacy wheel installed
    wheel = installed_wheel(commands)
    assert wheel.parent == build.wheel_dir(PIN, ARGS, tmp_path) != legacy and wheel.read_text() == "new"


def installed(monkeypatch: pytest.MonkeyPatch, files: list[str] | None, probe_says: str) -> list[list[str]]:
    """The pinned llama-cpp-python installed with `files` (None: no RECORD), its probe printing
    `probe_says`."""

    def version(name: str) -> str:
        if name != "llama-cpp-python":
            raise importlib.metadata.PackageNotFoundError(name)
        return VERSION

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.metadata, "files", lambda name: files)
    monkeypatch.setattr(build, "this_machine_cmake_args", lambda cache, amx=True: ("-DGGML_NATIVE=OFF", ""))
    return fake_pip(monkeypatch, probe_says)


def test_a_cuda_build_is_kept_where_no_gpu_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """llama_supports_gpu_offload() is false with no device (what the probe says on such a machine)."""
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.delenv("LLAMACPP_CMAKE_ARGS", raising=False)
    commands = installed(
        monkeypatch, [*CPU_BUILD_FILES, "llama_cpp/lib/libggml-cuda.so"], "gpu_offload False\n"
    )
    assert build.main(["build.py"]) == 0
    assert commands == []  # before: the probe ran, then the CPU wheel was built and installed over it
    assert f"keeping the installed llama-cpp-python {VERSION}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "library",
    [
        "llama_cpp/lib/libggml-cuda.so.0",
        "llama_cpp/lib/libggml-hip.so",
        "llama_cpp/lib/libggml-vulkan.so",
        "llama_cpp/lib/libggml-metal.dylib",
        "llama_cpp/lib/ggml-cuda.dll",
    ],
)
def test_any_gpu_backend_library_is_a_gpu_build(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = installed(monkeypatch, [*CPU_BUILD_FILES, library], "gpu_offload False\n")
    assert build.installed_llamacpp() == (VERSION, True)
    assert commands == []  # no child initializes CUDA


@pytest.mark.parametrize(
    ("files", "probe_says", "gpu"),
    [
        (CPU_BUILD_FILES, "gpu_offload False\n", False),  # a CPU build: headers of every backend
        (CPU_BUILD_FILES, "gpu_offload True\n", True),  # a GPU build whose library is not named so
        (None, "gpu_offload True\n", True),  # no RECORD: the probe, as before
        (None, "", False),
    ],
)
def test_without_a_gpu_library_the_probe_decides(
    files: list[str] | None, probe_says: str, gpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = installed(monkeypatch, files, probe_says)
    assert build.installed_llamacpp() == (VERSION, gpu)
    assert [c[1] for c in commands] == ["-c"]
