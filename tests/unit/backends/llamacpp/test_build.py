"""The llama.cpp build flags `make install` compiles with: this CPU's extensions by name, never AMX
(llama.cpp's AMX kernels die with SIGILL on this project's Intel VMs, taking the process along)."""

from __future__ import annotations

from pathlib import Path

from optimizer.backends.llamacpp.build import cmake_args, cpu_flags, pinned_requirement, wheel_dir

SAPPHIRE_RAPIDS_VM = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx_vnni avx512_bf16 avx512vbmi avx512_vnni amx_bf16 amx_tile amx_int8\n\n"
    "processor\t: 1\nflags\t\t: fpu\n"
)
ZEN3 = "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2\n"


def options(args: str) -> dict[str, str]:
    return dict(arg.removeprefix("-D").split("=") for arg in args.split())


def test_every_extension_the_cpu_has_and_never_amx() -> None:
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
