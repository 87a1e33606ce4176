"""Compile llama-cpp-python for this CPU, without AMX, into a wheel cache keyed by its flags.

PyPI has only llama-cpp-python's source, and llama.cpp's default build (`-march=native`) compiles
in every extension the CPU reports, AMX included. On this project's Intel VMs (KVM guests with
Sapphire Rapids flags, `amx_tile` among them; the kernel grants the tile state) llama.cpp's AMX
matmul then dies with SIGILL on `tilezero` in an OpenMP worker, and takes the whole process with
it (a small AMX program runs there: the cause was not pinned down, this build avoids it). So the build names the CPU's vector extensions one by one (`GGML_NATIVE=OFF`), AMX never.

pip's own wheel cache is keyed by the source's URL, not by CMAKE_ARGS, so a wheel it cached from an
earlier build would bring that build's flags back: the wheel is built without pip's cache into
`<cache>/wheels/<key of version and flags>/` and installed from there.

Standard library only: `make install` runs this file before wattsmith is installed.

    python optimizer/backends/llamacpp/build.py              # build (once per flags) and install
    python optimizer/backends/llamacpp/build.py --cmake-args # print the flags, for a build of your own
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

# llama.cpp's CMake option for each x86 extension, by its /proc/cpuinfo flag (AVX512 needs all five
# of F, CD, VL, DQ, BW: ggml's GGML_AVX512 passes those five to the compiler)
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
)
NO_AMX = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first processor's feature flags in /proc/cpuinfo's text."""
    match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cmake_args(machine: str, flags: set[str]) -> str:
    """CMAKE_ARGS for llama.cpp on this CPU: on x86-64 each extension it has, AMX never; elsewhere
    nothing (llama.cpp's native default: no AMX there)."""
    if machine not in ("x86_64", "AMD64") or not flags:
        return ""
    options = [
        f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}" for option, needs in X86_OPTIONS
    ]
    return " ".join(["-DGGML_NATIVE=OFF", *options, *(f"-D{option}=OFF" for option in NO_AMX)])


def this_machine_cmake_args() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return cmake_args(platform.machine(), cpu_flags(cpuinfo))


def pinned_requirement(pyproject: Path = PYPROJECT) -> str:
    """The llamacpp extra's `llama-cpp-python==X` from pyproject.toml: one pin for both."""
    match = re.search(r'"(llama-cpp-python==[^"]+)"', pyproject.read_text())
    if not match:
        raise SystemExit(f"{pyproject}: no llama-cpp-python==... pin in the llamacpp extra")
    return match.group(1)


def wheel_dir(requirement: str, args: str, cache: Path) -> Path:
    key = hashlib.sha256(f"{requirement}\n{args}".encode()).hexdigest()[:16]
    return cache / "wheels" / f"llama-cpp-python-{key}"


def main(argv: list[str]) -> int:
    args = os.environ.get("LLAMACPP_CMAKE_ARGS", this_machine_cmake_args())
    if argv[1:] == ["--cmake-args"]:
        print(args)
        return 0
    requirement = pinned_requirement()
    cache = Path(os.environ.get("WATTSMITH_CACHE") or Path.home() / ".cache" / "wattsmith")
    wheels = wheel_dir(requirement, args, cache)
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        print(f"compiling {requirement} (CMAKE_ARGS={args or 'none'}) into {wheels}", flush=True)
        building = wheels.with_name(wheels.name + ".partial")
        pip = [sys.executable, "-m", "pip"]
        env = os.environ | {"CMAKE_ARGS": args}
        subprocess.run(
            [*pip, "wheel", "-q", "--no-deps", "--no-cache-dir", "-w", str(building), requirement],
            env=env,
            check=True,
        )
        building.rename(wheels)
    wheel = next(wheels.glob("llama_cpp_python-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
