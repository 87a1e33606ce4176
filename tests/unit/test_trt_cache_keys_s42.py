"""TensorRT engine caches keyed by what an engine must match (TensorRT, ONNX Runtime, the GPU), and
the fix text of an empty WATTSMITH_CACHE true for `optimize` and `optimize verify` alike.

No GPU nor TensorRT: the installed versions are faked at the distribution metadata they are read
from, and the ONNX Runtime session is never made."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from optimizer.backends import installed
from optimizer.config import compose_run_config
from optimizer.errors import UserError
from optimizer.recipe import default_cache_dir
from optimizer.space import Candidate
from optimizer.target import TargetSpec
from unit.factories import target_spec

onnx = pytest.importorskip("onnx", reason="the TensorRT EP options read the model's inputs with onnx")
from optimizer.backends.ort_onnx import backend as ort_backend  # noqa: E402
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings  # noqa: E402

LIBS = "tensorrt-cu12-libs"
H100 = target_spec(kind="cuda")


def fake_installed(
    monkeypatch: pytest.MonkeyPatch, tensorrt: str | None, onnxruntime: str, module_dist: str = LIBS
) -> None:
    """These versions of TensorRT and onnxruntime-gpu installed, as metadata says (pip's wheels:
    the libraries in tensorrt_libs; module_dist="tensorrt": a system install, the module alone)."""
    versions = {"onnxruntime-gpu": onnxruntime} | ({module_dist: tensorrt} if tensorrt else {})
    real = metadata.version

    def version(name: str) -> str:
        if name in versions:
            return versions[name]
        if name in ("onnxruntime", LIBS, "tensorrt"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    module = "tensorrt_libs" if module_dist == LIBS else "tensorrt"
    provided = {module: [module_dist]} if tensorrt else {}
    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setattr(metadata, "packages_distributions", lambda: provided)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A decoder export's inputs (one layer, 2 KV heads of 16) without its graph: all the options read."""
    from onnx import TensorProto, helper

    def tensor(name: str, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        tensor("past.0.key", ["batch", 2, "past", 16]),
        tensor("past.0.value", ["batch", 2, "past", 16]),
    ]
    node = helper.make_node("Identity", ["past.0.key"], ["present.0.key"])
    graph = helper.make_graph([node], "decoder", inputs, [tensor("present.0.key", ["batch", 2, "past", 16])])
    out = tmp_path / "onnx" / "abc-123" / "fp32"
    out.mkdir(parents=True)
    onnx.save(helper.make_model(graph), str(out / "model.onnx"))
    return out


class Built(Exception):
    """Raised in place of the session: the providers were decided."""


def ep_cache(monkeypatch: pytest.MonkeyPatch, model_dir: Path, target: TargetSpec, workdir: Path) -> str:
    """The engine cache directory a TensorRT EP candidate's build hands to ONNX Runtime."""
    options: dict[str, Any] = {}

    def session(model_file: Path, providers: list[Any], threads: int, spinning: bool = True) -> Any:
        options.update(providers[0][1])
        raise Built

    monkeypatch.setattr(ort_backend, "onnx_model_for", lambda settings, model, workdir: model_dir)
    monkeypatch.setattr(ort_backend, "make_session", session)
    monkeypatch.setattr(ort_backend, "check_provider_built", lambda provider: None)
    candidate = Candidate(OrtOnnxSettings(provider="tensorrt", precision="fp16"), 4, 0)
    with pytest.raises(Built):
        ort_backend.OrtOnnxBackend().build(None, candidate, target, workdir)  # type: ignore[arg-type]
    assert options["trt_timing_cache_path"] == options["trt_engine_cache_path"]
    return str(options["trt_engine_cache_path"])


def test_the_tensorrt_ep_cache_is_keyed_by_tensorrt_onnxruntime_and_the_gpu(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    """Before: workdir/tensorrt-ep/<variant>/<model> for every TensorRT, ORT and GPU, and ORT
    fails the session on an engine it cannot deserialize (it does not rebuild it)."""
    workdir = tmp_path / "cache"

    def cache(tensorrt: str, onnxruntime: str = "1.22.0", target: TargetSpec = H100) -> str:
        fake_installed(monkeypatch, tensorrt, onnxruntime)
        return ep_cache(monkeypatch, model_dir, target, workdir)

    assert H100.gpu is not None
    h200 = replace(H100, gpu=replace(H100.gpu, name="NVIDIA H200"))  # same sm_90, another GPU
    other_cc = replace(H100, gpu=replace(H100.gpu, compute_capability=(8, 0)))
    base = cache("10.9.0.34")
    assert Path(base).is_dir() and Path(base).is_relative_to(workdir / "tensorrt-ep" / "abc-123" / "fp32")
    assert cache("10.9.0.34") == base  # nothing changed: the engine is reused
    others = [
        cache("10.11.0.33"),  # a TensorRT upgrade
        cache("10.9.0.34", onnxruntime="1.23.0"),  # an ONNX Runtime upgrade
        cache("10.9.0.34", target=h200),
        cache("10.9.0.34", target=other_cc),  # the same name, another compute capability
    ]
    assert len({base, *others}) == 5, others


def test_tensorrt_version_reads_metadata_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_installed(monkeypatch, "10.9.0.34", "1.22.0")
    assert installed.tensorrt_version() == f"{LIBS} 10.9.0.34"
    fake_installed(monkeypatch, "10.3.0", "1.22.0", module_dist="tensorrt")  # a system install
    assert installed.tensorrt_version() == "tensorrt 10.3.0"
    fake_installed(monkeypatch, None, "1.22.0")
    assert installed.tensorrt_version() is None
    assert "tensorrt" not in sys.modules


def test_the_native_tensorrt_engine_is_keyed_by_tensorrt_and_the_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Already so (no change): the engine's directory and the timing cache name both."""
    from optimizer.backends.tensorrt import backend as trt_backend
    from optimizer.backends.tensorrt.settings import TensorRTSettings

    timing: list[Path] = []

    def build_engine_file(
        onnx_file: Path, engine_file: Path, precision: str, batch: int, cache: Path
    ) -> None:
        engine_file.write_bytes(b"engine")
        timing.append(cache)

    monkeypatch.setattr(trt_backend, "build_engine_file", build_engine_file)
    onnx_dir = tmp_path / "onnx" / "abc-123" / "fp32"

    def engine(version: str, target: TargetSpec = H100) -> Path:
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
        return trt_backend.ensure_engine(onnx_dir, TensorRTSettings("fp16"), 4, target, tmp_path)

    assert H100.gpu is not None
    base = engine("10.9.0.34")
    assert engine("10.9.0.34") == base
    h200 = replace(H100, gpu=replace(H100.gpu, name="NVIDIA H200"))
    assert len({base, engine("10.11.0.33"), engine("10.9.0.34", h200)}) == 3
    assert len(set(timing)) == 3  # built three times, each with its own timing cache


def test_the_empty_cache_variable_names_a_fix_that_optimize_and_verify_both_take(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "... or pass cache_dir=DIR", which `optimize verify` refuses as an argument."""
    from optimizer import cli

    monkeypatch.setenv("WATTSMITH_CACHE", "")
    with pytest.raises(UserError) as info:
        default_cache_dir()  # what `optimize verify` reads
    fix = info.value.fix
    assert "WATTSMITH_CACHE=DIR" in fix  # verify's way: the variable
    assert "or pass cache_dir=DIR" not in fix and "verify `--cache-dir DIR`" in fix
    assert cli._verify(["recipe.yaml", f"cache_dir={tmp_path}"]) == 2  # indeed
    assert "unrecognized arguments: cache_dir=" in capsys.readouterr().err
    # a search's way, as the fix spells it
    override = next(word for word in fix.replace("`", " ").split() if word.startswith("cache_dir="))
    run = compose_run_config(["target=cpu", override.replace("DIR", str(tmp_path))])
    assert run.cache_dir == str(tmp_path)
