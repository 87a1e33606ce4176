"""build.py's wheel cache key for a native build (llama.cpp's default, every non-x86 CPU): the
wheel is compiled for whatever the building CPU has, so the key must name that CPU.

Before: a native build's CMAKE_ARGS are "" on every aarch64 machine, so a cache shared by a
Graviton3 (SVE, i8mm, bf16) and a Graviton2 handed the Graviton3's -mcpu=native wheel to the
Graviton2, where its first SVE instruction is SIGILL."""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

import pytest

from optimizer.backends.llamacpp import build

PIN = build.pinned_requirement()
GRAVITON2 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU part\t: 0xd0c\n"
GRAVITON3 = GRAVITON2.replace("asimddp ssbs", "asimddp ssbs sve sve2 i8mm bf16").replace("0xd0c", "0xd40")


def native_key(cpuinfo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The wheel entry `make install` builds into on an aarch64 machine with this /proc/cpuinfo."""
    read_text = Path.read_text

    def fake_read_text(self: Path, *args: object, **kwargs: object) -> str:
        return cpuinfo if str(self) == "/proc/cpuinfo" else read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(sysconfig, "get_platform", lambda: "linux-aarch64")
    args, _ = build.this_machine_cmake_args(tmp_path)
    assert "GGML_NATIVE=OFF" not in args  # llama.cpp's native default
    return build.wheel_dir(PIN, args, tmp_path, build.source_patch(args))


def test_a_native_wheel_is_keyed_by_the_cpu_it_was_compiled_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graviton3 = native_key(GRAVITON3, tmp_path, monkeypatch)
    assert native_key(GRAVITON3, tmp_path, monkeypatch) == graviton3  # stable on one CPU
    assert native_key(GRAVITON2, tmp_path, monkeypatch) != graviton3  # before: the same entry


def test_explicit_flags_are_the_key_whatever_else_the_cpu_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x86 builds name every extension in their flags: one key for CPUs with the same ones."""
    args = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"
    key = build.wheel_dir(PIN, args, tmp_path)
    read_text = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: (
            "flags\t: avx2 other" if str(self) == "/proc/cpuinfo" else read_text(self, *a, **k)
        ),
    )
    assert build.wheel_dir(PIN, args, tmp_path) == key
