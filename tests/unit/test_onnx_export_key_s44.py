"""The export key covers the model's own code only where there is code to run: trust_remote_code
on a model without Python files exports the same graph, so it reuses the same export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from optimizer.backends.onnx.export import export_dir
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape


def spec_at(folder: Path, trust_remote_code: bool) -> ModelSpec:
    shape = ModelShape(2, 64, 4, 2, 16, 256, 1000)
    return ModelSpec("m", str(folder), folder, "hf-dir", "a" * 64, trust_remote_code, None, shape)


def test_trusting_a_model_without_code_keeps_its_export(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert export_dir(spec_at(tmp_path, True), tmp_path) == export_dir(spec_at(tmp_path, False), tmp_path)


def test_the_models_own_code_keys_the_export(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "custom"}')
    (tmp_path / "modeling_custom.py").write_text("A = 1\n")
    trusted = spec_at(tmp_path, True)
    before = export_dir(trusted, tmp_path)
    assert before != export_dir(dataclasses.replace(trusted, trust_remote_code=False), tmp_path)
    (tmp_path / "modeling_custom.py").write_text("A = 2\n")
    assert export_dir(trusted, tmp_path) != before
