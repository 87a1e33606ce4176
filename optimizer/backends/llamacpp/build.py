"""Compile llama-cpp-python for this CPU into a wheel cache keyed by its flags, with ggml's AMX matmul where
the CPU has it and a probe says it computes.

PyPI has only llama-cpp-python's source, and llama.cpp's default build (`-march=native`) compiles in every
extension the CPU reports. So the build names the CPU's vector extensions one by one (`GGML_NATIVE=OFF`).
ggml's AMX matmul died with SIGILL on this project's Intel VMs (Sapphire Rapids flags) for two reasons, and
the AMX build fixes both (evals/results/2026-12-06-cpu-llamacpp-amx/):

1. GCC 12's `_tile_loadconfig` names an 8-byte memory operand (`*(const void **)config`), so the compiler
   drops ggml's stores of the tile rows and columns as dead, `ldtilecfg` loads a config with no tiles, and
   the first tile instruction is undefined. A force-included header (an `ldtilecfg` naming all 64 bytes)
   fixes that; a probe compiles a tile config the way ggml writes it, with that header, and runs an int8
   tile product: AMX only when it exits cleanly with the right answer.
2. ggml loads its tile config once per thread (a thread_local flag). torch's bf16 matmuls (oneDNN's AMX
   kernels) run on the same threads (one libgomp for both, and the caller's thread) and leave the tiles
   without ggml's config, so the next llama.cpp matmul on such a thread is SIGILL again; wattsmith runs
   torch and llama.cpp candidates in one process. The AMX wheel is built from the sdist with that flag made
   local (GGML_TILE_CONFIG_PATCH): one `ldtilecfg` per matmul and thread.

With both, llama.cpp processes prompts 2.2x and a batch of 16 requests 2.8x faster on those VMs.
`LLAMACPP_AMX=0` builds without AMX.

pip's own wheel cache is keyed by the source's URL, not by CMAKE_ARGS (its wheel would bring an earlier
build's flags back): the wheel is built without it into `<cache>/wheels/<key of version, flags, patch and
platform>/`, by way of a copy named for its process renamed into place (what a failed or killed build left
is never taken in; two builds at once keep out of each other's way). An installed GPU build of the pinned
version (docs/backends.md's CUDA build) stays.

Standard library only (and optimizer.processes and optimizer.config, which are): `make install` runs this
file before wattsmith or its dependencies are installed.

    python optimizer/backends/llamacpp/build.py               # build (once per flags), install
    python optimizer/backends/llamacpp/build.py --cmake-args  # the flags it builds with
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script: the checkout's optimizer, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from optimizer.config.run import cache_dir_from  # noqa: E402
from optimizer.errors import UserError  # noqa: E402
from optimizer.processes import remove_stale_temps, temp_path  # noqa: E402

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
# ggml's AMX kernels are compiled only with AMX_INT8 and AVX512_VNNI (and AVX512 for the rest)
AMX_NEEDS = ("amx_tile", "amx_int8", "avx512_vnni", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"

# Force-included into every llama.cpp source: under GCC with AMX enabled, `_tile_loadconfig` becomes
# an `ldtilecfg` whose memory operand is the whole 64-byte config, so its stores stay.
AMX_TILE_CONFIG_H = """/* wattsmith: GCC 12's _tile_loadconfig names an 8-byte operand and the compiler drops the
   stores that fill the tile config; this one names all 64 bytes. */
#if defined(__AMX_TILE__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
static inline __attribute__((always_inline)) void wattsmith_tile_loadconfig(const void *config) {
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const unsigned char(*)[64])config));
}
#define _tile_loadconfig(config) wattsmith_tile_loadconfig(config)
#endif
"""

# ggml's tile config, written field by field as ggml-cpu/amx/mmq.cpp writes it, then an int8 tile
# product checked against its known value. Exit 0 only when AMX really computes here.
AMX_PROBE_CPP = r"""
#include <immintrin.h>
#include <cstdint>
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
struct tile_config_t { uint8_t palette_id; uint8_t start_row; uint8_t reserved[14];
                       uint16_t colsb[16]; uint8_t rows[16]; };
__attribute__((noinline)) static void configure() {
    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    tc.rows[0] = 16; tc.colsb[0] = 64;  // C: 16 x 16 int32
    tc.rows[1] = 16; tc.colsb[1] = 64;  // A: 16 x 64 int8
    tc.rows[2] = 16; tc.colsb[2] = 64;  // B: 16 x (16 x 4) int8, VNNI layout
    _tile_loadconfig(&tc);
}
int main() {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) {
        std::puts("the kernel refused the AMX tile state");
        return 2;
    }
    alignas(64) static int8_t a[16][64], b[16][64];
    alignas(64) static int32_t c[16][16];
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 64; k++) { a[i][k] = 1; b[i][k] = 2; }
    configure();
    _tile_zero(0);
    _tile_loadd(1, a, 64);
    _tile_loadd(2, b, 64);
    _tile_dpbssd(0, 1, 2);
    _tile_stored(0, c, 64);
    _tile_release();
    if (c[0][0] != 128 || c[15][15] != 128) {
        std::printf("wrong int8 tile product: %d\n", c[0][0]);
        return 3;
    }
    return 0;
}
"""


@dataclass(frozen=True)
class SourcePatch:
    """One edit to the sdist: `old` must occur exactly once in `path`, or the build stops."""

    path: str
    old: str
    new: str

    def apply(self, root: Path, requirement: str) -> None:
        file = root / self.path
        text = file.read_text() if file.exists() else ""
        if text.count(self.old) != 1:
            raise SystemExit(
                f"{requirement}: {self.path} does not have {self.old!r} exactly once, so the AMX "
                "patch (build.py's GGML_TILE_CONFIG_PATCH) does not fit this version: update it, "
                "or build without AMX (LLAMACPP_AMX=0 make install)"
            )
        file.write_text(text.replace(self.old, self.new))


# ggml_tile_config_init returns early once a thread has loaded the config; made a plain local, the
# flag never skips the load, so every AMX matmul loads ggml's config on each of its threads.
GGML_TILE_CONFIG_PATCH = SourcePatch(
    path="vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp",
    old="    static thread_local bool done = false;\n",
    new="    bool done = false;  // wattsmith: load every time; torch's oneDNN AMX replaces it on the thread\n",
)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's feature flags (x86's flags, Arm's Features) in `cpuinfo` or /proc/cpuinfo."""
    if cpuinfo is None:
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo or "", re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def has_ggml_amx(flags: set[str]) -> bool:
    """The CPU has what ggml's AMX kernels are compiled with."""
    return all(f in flags for f in AMX_NEEDS)


def cmake_args(machine: str, flags: set[str], amx_header: Path | None = None) -> str:
    """CMAKE_ARGS for llama.cpp on this CPU: on x86-64 each extension it has, and AMX where the CPU
    has what ggml's AMX kernels need and `amx_header` is given (the tile-config header the probe
    ran with: force-included into the build); elsewhere nothing (llama.cpp's native default)."""
    if machine not in ("x86_64", "AMD64") or not flags:
        return ""
    options = [
        f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}" for option, needs in X86_OPTIONS
    ]
    amx = amx_header is not None and has_ggml_amx(flags)
    amx_options = {"GGML_AMX_TILE": amx, "GGML_AMX_INT8": amx, "GGML_AMX_BF16": amx and "amx_bf16" in flags}
    amx_args = (f"-D{k}={'ON' if on else 'OFF'}" for k, on in amx_options.items())
    args = ["-DGGML_NATIVE=OFF", *options, *amx_args]
    if amx:
        args += [f"-DCMAKE_C_FLAGS=-include{amx_header}", f"-DCMAKE_CXX_FLAGS=-include{amx_header}"]
    return " ".join(args)


def write_amx_header(cache: Path) -> Path:
    """AMX_TILE_CONFIG_H under the cache, named by its content (the wheel's key changes with it)."""
    digest = hashlib.sha256(AMX_TILE_CONFIG_H.encode()).hexdigest()[:8]
    path = cache.resolve() / "llamacpp-build" / f"amx_tile_config-{digest}.h"  # CMake builds elsewhere
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(AMX_TILE_CONFIG_H)
    return path


def amx_probe(cxx: str, header: Path) -> str | None:
    """None when an AMX program compiled by `cxx` with `header` force-included computes right on
    this machine; otherwise why not, in words."""
    with tempfile.TemporaryDirectory() as tmp:
        source, program = Path(tmp) / "amx_probe.cpp", Path(tmp) / "amx_probe"
        source.write_text(AMX_PROBE_CPP)
        compile_flags = ["-O3", "-mamx-tile", "-mamx-int8", f"-include{header}"]
        try:
            built = subprocess.run(
                [cxx, *compile_flags, str(source), "-o", str(program)], capture_output=True, text=True
            )
        except OSError as error:
            return f"no C++ compiler to probe AMX with ({cxx}: {error.strerror})"
        if built.returncode != 0:
            return (
                f"{cxx} could not compile an AMX program: {(built.stderr.strip().splitlines() or ['?'])[-1]}"
            )
        try:
            ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"an AMX program could not run here ({error})"
    if ran.returncode < 0:
        return f"an AMX program died with {signal.Signals(-ran.returncode).name} here"
    if ran.returncode != 0:
        return ran.stdout.strip() or f"an AMX program exited with {ran.returncode}"
    return None


def this_machine_cmake_args(cache: Path, amx: bool = True) -> tuple[str, str]:
    """This machine's CMAKE_ARGS, and a line on AMX ('' where the CPU has none). AMX unless `amx`
    is False, and only where the probe computes."""
    machine, flags = platform.machine(), cpu_flags()
    plain = cmake_args(machine, flags)
    if not (plain and has_ggml_amx(flags)):
        return plain, ""
    if not amx:
        return plain, "AMX off: LLAMACPP_AMX=0"
    header = write_amx_header(cache)
    cxx = os.environ.get("CXX") or shutil.which("c++") or "c++"  # the compiler CMake will take
    if " " in str(header):
        reason: str | None = f"the cache path has a space ({header}), which CMAKE_ARGS cannot carry"
    else:
        reason = amx_probe(cxx, header)
    if reason:
        return plain, f"AMX off: {reason}"
    return cmake_args(machine, flags, header), f"AMX on: {cxx} with {header.name} ran an int8 tile product"


def pinned_requirement(pyproject: Path = PYPROJECT) -> str:
    """The llamacpp extra's `llama-cpp-python==X` from pyproject.toml: one pin for both."""
    match = re.search(r'"(llama-cpp-python==[^"]+)"', pyproject.read_text())
    if not match:
        raise SystemExit(f"{pyproject}: no llama-cpp-python==... pin in the llamacpp extra")
    return match.group(1)


def source_patch(args: str) -> SourcePatch | None:
    """The patch a build with these flags needs: one that names ggml's AMX kernels, or llama.cpp's
    native default (which compiles them in wherever the CPU has AMX; patched on any CPU)."""
    return GGML_TILE_CONFIG_PATCH if "GGML_AMX_INT8=ON" in args or "GGML_NATIVE=OFF" not in args else None


def wheel_dir(requirement: str, args: str, cache: Path, patch: SourcePatch | None = None) -> Path:
    # and what the wheel's binaries depend on beside their flags: OS and architecture (its tag names
    # them: py3-none-linux_x86_64, ctypes bindings for any Python) and libc (glibc 2.39's fails on 2.31,
    # and on musl), and a native build's CPU (-march=native compiles in all it has). Keys from before
    # are left: a shared cache cannot tell which machine built them.
    plat = f"{sysconfig.get_platform()} {'-'.join(platform.libc_ver())}"
    plat += "" if "GGML_NATIVE=OFF" in args else " " + " ".join(sorted(cpu_flags()))
    key_text = f"{requirement}\n{args}" + (f"\n{patch}" if patch else "") + f"\n{plat}"
    return cache / "wheels" / f"llama-cpp-python-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}"


def patched_sdist(requirement: str, patch: SourcePatch, into: Path) -> Path:
    """`requirement`'s sdist from the package index, unpacked under `into`, `patch` applied."""
    pip_download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip_download, "-d", str(into), requirement], check=True)
    (sdist,) = into.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(into / "source", filter="data")
    (root,) = (into / "source").iterdir()
    patch.apply(root, requirement)
    return root


# run apart: a CUDA build initializes CUDA as it loads, and a broken one may abort
GPU_OFFLOAD_PROBE = "import llama_cpp.llama_cpp as c; print('gpu_offload', c.llama_supports_gpu_offload())"
# ggml's backends are libraries of their own (llama_cpp/lib/libggml-cuda.so; all builds have ggml-cuda.h)
GPU_LIBRARY = re.compile(r"/(lib)?ggml-(cuda|hip|musa|vulkan|metal|sycl|opencl|webgpu)\.(so|dylib|dll)")


def installed_llamacpp() -> tuple[str | None, bool]:
    """The installed llama-cpp-python's version (None: none), and whether it is a GPU build: a GPU
    backend's library among its files, else a probe's llama_supports_gpu_offload(), which is false
    wherever ggml finds no device (a CUDA build in an image built without a GPU, or with none visible)."""
    name = "llama-cpp-python"
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None, False
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        if any(GPU_LIBRARY.search(str(f)) for f in importlib.metadata.files(name) or []):
            return version, True
    try:
        probe = subprocess.run(
            [sys.executable, "-c", GPU_OFFLOAD_PROBE], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return version, False
    return version, probe.returncode == 0 and "gpu_offload True" in (probe.stdout or "")


def keep_installed(requirement: str, version: str | None, gpu_offload: bool) -> tuple[bool, str]:
    """Whether to keep the installed llama-cpp-python rather than install this CPU build, and a
    line saying what happens to a GPU build ('' for none or a CPU build: ours replaces it)."""
    if version is None or not gpu_offload:
        return False, ""
    pinned = requirement.partition("==")[2]
    if version == pinned:
        return True, (
            f"keeping the installed llama-cpp-python {version}: it offloads to a GPU, and this CPU "
            "build would replace it (to build ours: pip uninstall llama-cpp-python, then make install)"
        )
    return False, (
        f"replacing the installed llama-cpp-python {version}, a GPU build, with {requirement} compiled "
        f"for this CPU: wattsmith needs {pinned}. For a GPU target, install its GPU build afterwards: "
        f"CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir {requirement}"
    )


def build_wheel(requirement: str, args: str, patch: SourcePatch | None, wheels: Path) -> None:
    """Compile `requirement` with CMAKE_ARGS `args` into the cache entry `wheels`, by way of this
    process's copy beside it (`processes.temp_path`)."""
    print(f"compiling {requirement} (CMAKE_ARGS={args or 'none'}) into {wheels}", flush=True)
    remove_stale_temps(wheels)  # copies of builds killed outright (a live build's stay)
    # the one copy all builds shared before they were named for their process: it cannot tell a
    # live build from a dead one, and none of this version writes it
    shutil.rmtree(wheels.with_name(wheels.name + ".partial"), ignore_errors=True)
    building = temp_path(wheels)
    shutil.rmtree(building, ignore_errors=True)  # a dead process's, with this pid
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = str(patched_sdist(requirement, patch, Path(tmp))) if patch else requirement
            # compile, always: a prebuilt wheel pip can reach (an extra index, find-links) has
            # other flags, yet would be cached and installed under these flags' key
            pip_wheel = ["wheel", "-q", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python"]
            pip_wheel += ["-w", str(building), source]
            subprocess.run(
                [sys.executable, "-m", "pip", *pip_wheel], env=os.environ | {"CMAKE_ARGS": args}, check=True
            )
        try:
            building.rename(wheels)
        except OSError:  # another build of the same key finished first: install theirs
            if not list(wheels.glob("llama_cpp_python-*.whl")):
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def main(argv: list[str]) -> int:
    cache = Path(cache_dir_from(os.environ)).expanduser()  # the run config's rule: set but empty is refused
    if "LLAMACPP_CMAKE_ARGS" in os.environ:
        args, amx_line = os.environ["LLAMACPP_CMAKE_ARGS"], "CMAKE_ARGS from LLAMACPP_CMAKE_ARGS"
    else:
        args, amx_line = this_machine_cmake_args(cache, amx=os.environ.get("LLAMACPP_AMX", "1") != "0")
    if "--cmake-args" in argv[1:]:
        if amx_line:
            print(amx_line, file=sys.stderr)
        print(args)
        return 0
    if amx_line:
        print(f"llama.cpp build: {amx_line}", flush=True)
    requirement, patch = pinned_requirement(), source_patch(args)
    if "LLAMACPP_CMAKE_ARGS" not in os.environ:  # (flags named: build what they say)
        keep, line = keep_installed(requirement, *installed_llamacpp())
        if line:
            print(f"llama.cpp build: {line}", flush=True)
        if keep:
            return 0
    wheels = wheel_dir(requirement, args, cache, patch)
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        build_wheel(requirement, args, patch, wheels)
    wheel = next(wheels.glob("llama_cpp_python-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv))
    except UserError as error:  # make install says what to fix, not a traceback
        raise SystemExit(f"{Path(__file__).name}: {error}") from None
