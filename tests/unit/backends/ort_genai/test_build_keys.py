"""What keys an onnxruntime-genai build in the cache: the weights and the builder options, and
also the model files the builder reads beside the weights and the packages it runs with."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from optimizer.backends.ort_genai.backend import build_dir_for
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape

FILES = {"config.json": '{"rope_theta": 10000.0}', "generation_config.json": '{"eos_token_id": 2}'}


def spec_with(folder: Path, files: dict[str, str]) -> ModelSpec:
    """A model directory holding `files`; the same weights hash whatever they hold."""
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    shape = ModelShape(2, 64, 4, 2, 16, 256, 1000)
    return ModelSpec("m", str(folder), folder, "hf-dir", "a" * 64, False, None, shape)


@pytest.mark.parametrize(
    "changed",
    [
        {"config.json": '{"rope_theta": 500.0}'},
        {"generation_config.json": '{"eos_token_id": [2, 7]}'},
        {"tokenizer_config.json": '{"eos_token": "<|im_end|>"}'},
    ],
)
def test_builds_are_keyed_by_the_model_files_the_builder_reads(
    tmp_path: Path, changed: dict[str, str]
) -> None:
    a = build_dir_for(spec_with(tmp_path / "a", FILES), OrtGenaiSettings(), tmp_path)
    assert a == build_dir_for(spec_with(tmp_path / "same", FILES), OrtGenaiSettings(), tmp_path)
    b = build_dir_for(spec_with(tmp_path / "b", FILES | changed), OrtGenaiSettings(), tmp_path)
    assert a != b


@pytest.mark.parametrize("package", ["onnxruntime", "transformers", "torch", "onnx-ir"])
def test_builds_are_keyed_by_the_packages_the_builder_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    spec = spec_with(tmp_path / "m", FILES)
    before = build_dir_for(spec, OrtGenaiSettings(precision="int4", accuracy_level=4), tmp_path)
    real: Callable[[str], str] = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "99.0.0" if name == package else real(name))
    assert build_dir_for(spec, OrtGenaiSettings(precision="int4", accuracy_level=4), tmp_path) != before
