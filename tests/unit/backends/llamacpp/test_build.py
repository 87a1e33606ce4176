"""The llama.cpp build: this CPU's extensions by name, and AMX only where a probe computes (under
GCC 12 ggml's tile config is compiled away unless the build force-includes our `ldtilecfg`), from
an sdist patched so that ggml loads its tile config on every matmul (torch's bf16 matmuls in the
same process replace it: SIGILL)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from optimizer.backends.llamacpp.build import (
    GGML_TILE_CONFIG_PATCH,
    SourcePatch,
    amx_probe,
    cmake_args,
    cpu_flags,
    has_ggml_amx,
    pinned_requirement,
    source_patch,
    this_machine_cmake_args,
    wheel_dir,
    write_amx_header,
)

SAPPHIRE_RAPIDS_VM = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx_vnni avx512_bf16 avx512vbmi avx512_vnni amx_bf16 amx_tile amx_int8\n\n"
    "processor\t: 1\nflags\t\t: fpu\n"
)
ZEN3 = "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2\n"


def options(args: str) -> dict[str, str]:
    return dict(arg.removeprefix("-D").split("=", 1) for arg in args.split())


def test_every_extension_the_cpu_has_and_amx_only_with_the_probed_header() -> None:
    flags = cpu_flags(SAPPHIRE_RAPIDS_VM)
    assert "amx_tile" in flags and "avx512f" in flags  # the first processor's line
    spr = options(cmake_args("x86_64", flags))
    assert spr["GGML_NATIVE"] == "OFF"  # -march=native would compile AMX in
    assert {k: v for k, v in spr.items() if k.startswith("GGML_AMX")} == dict.fromkeys(
        ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"), "OFF"
    )
    assert spr["GGML_AVX512"] == spr["GGML_AVX512_VNNI"] == spr["GGML_AVX_VNNI"] == spr["GGML_AVX2"] == "ON"
    zen3 = options(cmake_args("x86_64", cpu_flags(ZEN3)))
    assert zen3["GGML_AVX2"] == zen3["GGML_FMA"] == "ON"
    assert zen3["GGML_AVX512"] == zen3["GGML_AVX512_VNNI"] == zen3["GGML_AVX_VNNI"] == "OFF"
    # AVX512 only with all five of F, CD, VL, DQ, BW
    assert (
        options(cmake_args("x86_64", cpu_flags(ZEN3.replace("avx2", "avx2 avx512f"))))["GGML_AVX512"] == "OFF"
    )
    header = Path("/cache/llamacpp-build/amx_tile_config-0.h")
    amx = options(cmake_args("x86_64", flags, header))
    assert amx["GGML_AMX_TILE"] == amx["GGML_AMX_INT8"] == amx["GGML_AMX_BF16"] == "ON"
    assert amx["CMAKE_C_FLAGS"] == amx["CMAKE_CXX_FLAGS"] == f"-include{header}"
    no_bf16 = options(cmake_args("x86_64", flags - {"amx_bf16"}, header))
    assert no_bf16["GGML_AMX_INT8"] == "ON" and no_bf16["GGML_AMX_BF16"] == "OFF"
    # ggml's AMX kernels need AVX512 VNNI: without it, no AMX and no forced header
    no_vnni = options(cmake_args("x86_64", flags - {"avx512_vnni"}, header))
    assert no_vnni["GGML_AMX_INT8"] == "OFF" and "CMAKE_CXX_FLAGS" not in no_vnni
    assert "CMAKE_CXX_FLAGS" not in options(cmake_args("x86_64", cpu_flags(ZEN3), header))


def test_no_flags_where_llama_cpp_native_default_has_no_amx() -> None:
    assert cmake_args("aarch64", {"asimd", "sve"}) == ""
    assert cmake_args("x86_64", set()) == ""  # no /proc/cpuinfo: llama.cpp decides


def test_the_wheel_cache_is_keyed_by_version_and_flags(tmp_path: Path) -> None:
    pin = pinned_requirement()
    assert pin.startswith("llama-cpp-python==")
    pyproject = (Path(__file__).resolve().parents[4] / "pyproject.toml").read_text()
    assert f'llamacpp = ["{pin}"]' in pyproject
    one = wheel_dir(pin, "-DGGML_NATIVE=OFF", tmp_path)
    assert one == wheel_dir(pin, "-DGGML_NATIVE=OFF", tmp_path)
    assert one != wheel_dir(pin, "", tmp_path) and one.parent == tmp_path / "wheels"
    assert one != wheel_dir("llama-cpp-python==0.0.1", "-DGGML_NATIVE=OFF", tmp_path)
    patched = wheel_dir(pin, "-DGGML_NATIVE=OFF", tmp_path, GGML_TILE_CONFIG_PATCH)
    other_patch = SourcePatch(GGML_TILE_CONFIG_PATCH.path, GGML_TILE_CONFIG_PATCH.old, "")
    assert len({one, patched, wheel_dir(pin, "-DGGML_NATIVE=OFF", tmp_path, other_patch)}) == 3


def test_only_builds_with_ggml_amx_kernels_are_patched() -> None:
    spr = cpu_flags(SAPPHIRE_RAPIDS_VM)
    assert source_patch(cmake_args("x86_64", spr, Path("/cache/h.h"))) is GGML_TILE_CONFIG_PATCH
    assert source_patch(cmake_args("x86_64", spr)) is None  # LLAMACPP_AMX=0: PyPI's source as it is
    assert source_patch(cmake_args("x86_64", cpu_flags(ZEN3))) is None
    assert source_patch("") is GGML_TILE_CONFIG_PATCH  # llama.cpp's native default compiles AMX in


def test_the_patch_applies_once_or_stops_the_build(tmp_path: Path) -> None:
    mmq = tmp_path / GGML_TILE_CONFIG_PATCH.path
    mmq.parent.mkdir(parents=True)
    ggml = (
        "inline void ggml_tile_config_init(void) {\n    static thread_local bool done = false;\n\n"
        "    if (done) {\n        return;\n    }\n"
    )
    mmq.write_text(ggml)
    GGML_TILE_CONFIG_PATCH.apply(tmp_path, "llama-cpp-python==0.3.36")
    patched = mmq.read_text()
    assert "thread_local" not in patched and "    bool done = false;  // wattsmith" in patched
    with pytest.raises(
        SystemExit, match=r"ggml-cpu/amx/mmq.cpp does not have .* exactly once.*LLAMACPP_AMX=0"
    ):
        GGML_TILE_CONFIG_PATCH.apply(tmp_path, "llama-cpp-python==0.3.36")  # already patched: no match
    mmq.write_text(ggml + ggml)
    with pytest.raises(SystemExit, match="exactly once"):
        GGML_TILE_CONFIG_PATCH.apply(tmp_path, "llama-cpp-python==0.3.36")
    with pytest.raises(SystemExit, match="exactly once"):
        GGML_TILE_CONFIG_PATCH.apply(tmp_path / "absent", "llama-cpp-python==0.3.36")


def fake_compiler(tmp_path: Path, program: str) -> str:
    """A 'compiler' that writes `program` (a shell script) to its -o argument."""
    compiler = tmp_path / "fake-c++"
    compiler.write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do if [ "$1" = -o ]; then out=$2; fi; shift; done\n'
        f"printf '%s\\n' '#!/bin/sh' '{program}' > \"$out\"; chmod +x \"$out\"\n"
    )
    compiler.chmod(0o755)
    return str(compiler)


def test_the_probe_says_why_amx_stays_off(tmp_path: Path) -> None:
    header = write_amx_header(tmp_path)
    assert (
        header.read_text().startswith("/* wattsmith")
        and header.parent == tmp_path.resolve() / "llamacpp-build"
    )
    assert write_amx_header(tmp_path) == header  # named by its content: the same file again
    assert "died with SIGILL" in str(amx_probe(fake_compiler(tmp_path, "kill -ILL $$"), header))
    assert (
        amx_probe(fake_compiler(tmp_path, "echo the kernel refused; exit 2"), header) == "the kernel refused"
    )
    assert amx_probe(fake_compiler(tmp_path, "exit 0"), header) is None
    assert "no C++ compiler" in str(amx_probe(str(tmp_path / "absent-c++"), header))


CXX = shutil.which("c++")
ON_X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.skipif(not (CXX and ON_X86), reason="needs an x86-64 C++ compiler")
def test_the_forced_header_keeps_the_tile_config_stores(tmp_path: Path) -> None:
    """ggml's way of filling the tile config, compiled (not run: any x86 CPU will do): with the
    header, the store of a tile's 16 rows reaches the code before `ldtilecfg`."""
    source = tmp_path / "config.cpp"
    source.write_text(
        "#include <immintrin.h>\n#include <cstdint>\n"
        "struct tile_config_t { uint8_t palette_id, start_row, reserved[14]; uint16_t colsb[16];"
        " uint8_t rows[16]; };\n"
        "void configure() { alignas(64) tile_config_t tc = {}; tc.palette_id = 1; tc.rows[4] = 16;"
        " tc.colsb[4] = 64; _tile_loadconfig(&tc); }\n"
    )
    header = write_amx_header(tmp_path)
    compile_to_assembly = [str(CXX), "-O3", "-mamx-tile", "-S", "-o", "-", f"-include{header}", str(source)]
    assembly = subprocess.run(compile_to_assembly, capture_output=True, text=True, check=True).stdout
    body = assembly[: assembly.index("ldtilecfg")]
    assert "$16," in body and "$64," in body, body


CPUINFO = Path("/proc/cpuinfo")
HAS_AMX = ON_X86 and CPUINFO.exists() and has_ggml_amx(cpu_flags(CPUINFO.read_text()))


def test_llamacpp_amx_0_builds_without_amx_and_probes_nothing(tmp_path: Path) -> None:
    args, line = this_machine_cmake_args(tmp_path, amx=False)
    assert "GGML_AMX_INT8=ON" not in args and "-include" not in args
    assert not (tmp_path / "llamacpp-build").exists()  # no probe ran
    assert line in ("", "AMX off: LLAMACPP_AMX=0")  # '' on a CPU without AMX


@pytest.mark.skipif(not (CXX and HAS_AMX), reason="needs a CPU with AMX and a C++ compiler")
def test_amx_flags_by_default_where_the_probe_computes(tmp_path: Path) -> None:
    assert amx_probe(str(CXX), write_amx_header(tmp_path)) is None  # AMX computes here with the header
    args, line = this_machine_cmake_args(tmp_path)
    assert line.startswith("AMX on:") and "GGML_AMX_INT8=ON" in args and "-include" in args


@pytest.mark.parametrize("args", ["-DGGML_NATIVE=OFF -DGGML_AVX2=ON", ""])  # from PyPI; a patched sdist
def test_the_wheel_is_compiled_never_a_prebuilt_one_taken(
    args: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pip wheel llama-cpp-python==X` took any binary wheel pip could reach (an extra index of
    prebuilt wheels, find-links) and build.py cached it under these flags' key."""
    from optimizer.backends.llamacpp import build

    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "wheel" in command:  # what pip wheel leaves: one wheel in the -w folder
            out = Path(command[command.index("-w") + 1])
            out.mkdir(parents=True)
            (out / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_text("")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(build.subprocess, "run", run)
    monkeypatch.setattr(build, "patched_sdist", lambda requirement, patch, into: into / "source")
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLAMACPP_CMAKE_ARGS", args)
    assert build.main(["build.py"]) == 0
    (wheel,) = [c for c in commands if "wheel" in c]
    assert wheel[wheel.index("--no-binary") + 1] == "llama-cpp-python"
    assert "install" in commands[-1] and commands[-1][-1].endswith(".whl")
