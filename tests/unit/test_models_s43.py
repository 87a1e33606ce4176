"""Build caches keyed by everything that makes the artifact, and TensorRT engines built at the
precision they are named for.

- An ONNX export of a trust_remote_code model is keyed by its modeling code (an edited
  modeling_*.py reused the export of the old code).
- A Hugging Face directory's GGUF conversion (llama.cpp's converter) is keyed by the packages the
  converter imports: gguf (the checkout's gguf-py when it has one), transformers...
- Native TensorRT: an fp32 engine clears TensorRT's default TF32 flag, and an int8 engine sets FP16
  only where the target has fp16 (target.fp16); the engine's key names its flags.

No llama.cpp, TensorRT nor GPU: a stand-in converter and a fake `tensorrt` module."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from optimizer.backends.llamacpp.weights import CONVERTER_ENV, NO_LOCAL_GGUF, source_gguf
from optimizer.backends.onnx.export import export_dir
from optimizer.backends.tensorrt import backend as trt_backend
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape
from optimizer.target import TargetSpec
from unit.factories import target_spec

SHAPE = ModelShape(2, 64, 4, 2, 16, 256, 1000)


def faked_version(monkeypatch: pytest.MonkeyPatch, package: str, version: str) -> None:
    real: Callable[[str], str] = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if name == package else real(name))


# --- the ONNX export of a model that runs its own code ---


def remote_model(tmp_path: Path, trusted: bool) -> ModelSpec:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    auto_map = {
        "AutoConfig": "configuration_toy.ToyConfig",
        "AutoModelForCausalLM": "modeling_toy.ToyForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "auto_map": auto_map}))
    (folder / "configuration_toy.py").write_text("SCALE = 1.0\n")
    (folder / "modeling_toy.py").write_text("from .configuration_toy import SCALE\n")
    return ModelSpec("toy", str(folder), folder, "hf-dir", "a" * 64, trusted, None, SHAPE)


def test_a_trusted_models_export_is_keyed_by_its_code(tmp_path: Path) -> None:
    """Before: keyed by config.json alone, an edited modeling_toy.py reused the old export."""
    model = remote_model(tmp_path, trusted=True)
    first = export_dir(model, tmp_path)
    assert export_dir(model, tmp_path) == first  # nothing changed: reused
    (model.path / "modeling_toy.py").write_text("from .configuration_toy import SCALE  # fixed\n")
    edited = export_dir(model, tmp_path)
    assert edited != first
    (model.path / "configuration_toy.py").write_text("SCALE = 2.0\n")  # a file it imports
    assert export_dir(model, tmp_path) not in (first, edited)


def test_an_untrusted_models_export_keeps_its_key(tmp_path: Path) -> None:
    """Without trust_remote_code transformers runs no file of the directory: .py edits change
    nothing, and the key is the one exports had before (no rebuild of other models)."""
    model = remote_model(tmp_path, trusted=False)
    first = export_dir(model, tmp_path)
    (model.path / "modeling_toy.py").write_text("# edited\n")
    assert export_dir(model, tmp_path) == first
    trusted = export_dir(replace(model, trust_remote_code=True), tmp_path)
    assert trusted != first


# --- the GGUF conversion of a Hugging Face directory ---


@pytest.fixture
def hf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """A model directory and a stand-in llama.cpp converter (WATTSMITH_HF_TO_GGUF)."""
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    script = checkout / "convert_hf_to_gguf.py"
    script.write_text(
        "import sys\nargs = sys.argv[1:]\nopen(args[args.index('--outfile') + 1], 'w').write('gguf')\n"
    )
    monkeypatch.setenv(CONVERTER_ENV, str(script))
    monkeypatch.delenv(NO_LOCAL_GGUF, raising=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    return ModelSpec("tiny", str(model_dir), model_dir, "hf-dir", "ab" * 32, False, None, SHAPE)


@pytest.mark.parametrize("package", ["gguf", "transformers"])
def test_the_conversion_is_keyed_by_the_packages_the_converter_imports(
    hf_dir: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    """Before: another gguf (its writer) or transformers (the vocabulary) reused the old GGUF."""
    cache = tmp_path / "cache"
    first = source_gguf(hf_dir, cache)
    assert source_gguf(hf_dir, cache) == first
    faked_version(monkeypatch, package, "99.0.0")
    assert source_gguf(hf_dir, cache) != first


def test_the_conversion_is_keyed_by_the_checkouts_own_gguf_py(
    hf_dir: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter imports the gguf-py beside it ahead of the installed gguf (unless
    NO_LOCAL_GGUF is set); its version is not bumped with every commit, so its files key it."""
    cache = tmp_path / "cache"
    local = tmp_path / "llama.cpp" / "gguf-py" / "gguf"
    local.mkdir(parents=True)
    (local / "constants.py").write_text("KEY = 'general.architecture'\n")
    first = source_gguf(hf_dir, cache)
    (local / "constants.py").write_text("KEY = 'general.arch'\n")
    edited = source_gguf(hf_dir, cache)
    assert edited != first
    monkeypatch.setenv(NO_LOCAL_GGUF, "1")  # the installed gguf then, whatever the checkout holds
    installed = source_gguf(hf_dir, cache)
    (local / "constants.py").write_text("KEY = 'general.architecture'\n")
    assert source_gguf(hf_dir, cache) == installed not in (first, edited)


# --- native TensorRT builder flags ---


class FakeConfig:
    """An IBuilderConfig that records its flags; TF32 is on by default, as in TensorRT."""

    def __init__(self) -> None:
        self.flags = {"TF32"}

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        pass

    def add_optimization_profile(self, profile: Any) -> None:
        pass

    def create_timing_cache(self, blob: bytes) -> Any:
        return object()

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> None:
        pass

    def get_timing_cache(self) -> Any:
        return types.SimpleNamespace(serialize=lambda: b"timing")


def fake_tensorrt(configs: list[FakeConfig]) -> types.ModuleType:
    """tensorrt's builder API as build_engine_file calls it, over a one-layer decoder's inputs."""
    inputs = [
        types.SimpleNamespace(name="input_ids", shape=[-1, -1]),
        types.SimpleNamespace(name="logits_positions", shape=[-1]),
        types.SimpleNamespace(name="past.0.key", shape=[-1, 2, -1, 16]),
        types.SimpleNamespace(name="past.0.value", shape=[-1, 2, -1, 16]),
    ]
    network = types.SimpleNamespace(num_inputs=len(inputs), get_input=lambda i: inputs[i])

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> Any:
            return network

        def create_builder_config(self) -> FakeConfig:
            configs.append(FakeConfig())
            return configs[-1]

        def create_optimization_profile(self) -> Any:
            return types.SimpleNamespace(set_shape=lambda name, low, opt, high: None)

        def build_serialized_network(self, network: Any, config: FakeConfig) -> bytes:
            return b"engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Any, logger: Any) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return True

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0.34"  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    trt.Builder = Builder  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def built_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[str, bool], tuple[Path, set[str]]]:
    """Build a native engine of a precision for an H100 target with or without fp16: its
    directory and the builder flags it was built with."""
    configs: list[FakeConfig] = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(configs))
    onnx_dir = tmp_path / "onnx" / "abc-123" / "fp32"
    onnx_dir.mkdir(parents=True)

    def build(precision: str, fp16: bool) -> tuple[Path, set[str]]:
        target: TargetSpec = target_spec(kind="cuda", fp16=fp16)
        configs.clear()
        out = trt_backend.ensure_engine(onnx_dir, TensorRTSettings(precision), 4, target, tmp_path / "cache")
        assert (out / trt_backend.ENGINE_FILE).read_bytes() == b"engine"
        return out, (configs[0].flags if configs else set())

    return build


@pytest.mark.parametrize(
    ("precision", "fp16", "flags"),
    [
        ("fp32", True, set()),  # before: {"TF32"}, TensorRT's default
        ("fp16", True, {"FP16"}),
        ("int8", True, {"FP16", "INT8"}),  # the layers without Q/DQ in fp16
        ("int8", False, {"INT8"}),  # before: FP16 too, on a target without fp16
    ],
)
def test_an_engine_is_built_with_its_precisions_flags_alone(
    built_flags: Callable[[str, bool], tuple[Path, set[str]]], precision: str, fp16: bool, flags: set[str]
) -> None:
    assert built_flags(precision, fp16)[1] == flags


def test_the_int8_engine_is_keyed_by_the_targets_fp16(
    built_flags: Callable[[str, bool], tuple[Path, set[str]]],
) -> None:
    """Its flags differ, so must its cache entry: neither engine is reused for the other."""
    with_fp16, _ = built_flags("int8", True)
    without, flags = built_flags("int8", False)
    assert without != with_fp16 and flags == {"INT8"}  # built, not reused
    assert built_flags("int8", False) == (without, set())  # the same again: reused, no build
