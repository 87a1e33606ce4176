"""What keys the ONNX export and its variants in the cache: not the weights alone, but the
config.json they are loaded with, and the versions of the packages that write them."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from optimizer.backends.onnx import quantize
from optimizer.backends.onnx.export import export_dir
from optimizer.backends.onnx.quantize import variant_dir
from optimizer.measure.text import TextSplits
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape


def spec_with(tmp_path: Path, config: str) -> ModelSpec:
    """A model directory holding `config` as config.json; the same weights hash whatever it is."""
    folder = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    shape = ModelShape(2, 64, 4, 2, 16, 256, 1000)
    return ModelSpec("m", str(folder), folder, "hf-dir", "a" * 64, False, None, shape)


def faked_version(monkeypatch: pytest.MonkeyPatch, package: str, version: str) -> None:
    real: Callable[[str], str] = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if name == package else real(name))


def test_the_export_is_keyed_by_config_json(tmp_path: Path) -> None:
    a = spec_with(tmp_path, '{"rope_theta": 10000.0}')
    b = spec_with(tmp_path, '{"rope_theta": 500.0}')
    assert export_dir(a, tmp_path) == export_dir(spec_with(tmp_path, '{"rope_theta": 10000.0}'), tmp_path)
    assert export_dir(a, tmp_path) != export_dir(b, tmp_path)


@pytest.mark.parametrize("package", ["onnxruntime", "transformers", "torch", "onnx", "onnxscript"])
def test_the_export_is_keyed_by_the_packages_that_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    spec = spec_with(tmp_path, "{}")
    before = export_dir(spec, tmp_path)
    faked_version(monkeypatch, package, "99.0.0")
    assert export_dir(spec, tmp_path) != before


@pytest.fixture
def calibration_text(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Pretend the packaged calibration text has the given sha256."""

    def use(sha256: str) -> None:
        splits = TextSplits("wiki", sha256, ["w"], ["q"])
        monkeypatch.setattr(quantize, "load_text", lambda text, field="": splits)

    return use


@pytest.mark.parametrize("name", ["int8-dynamic", "int8-static", "fp16"])
def test_variants_are_keyed_by_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibration_text, name: str
) -> None:
    calibration_text("0" * 64)
    fp32 = tmp_path / "export" / "fp32"
    before = variant_dir(fp32, name)
    assert before.parent == fp32.parent and before.name.startswith(name)
    faked_version(monkeypatch, "onnxruntime", "99.0.0")
    assert variant_dir(fp32, name) != before


def test_the_static_variant_is_keyed_by_its_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibration_text
) -> None:
    fp32 = tmp_path / "export" / "fp32"
    calibration_text("0" * 64)
    before = variant_dir(fp32, "int8-static")
    calibration_text("1" * 64)
    assert variant_dir(fp32, "int8-static") != before
    calibration_text("0" * 64)
    monkeypatch.setattr(quantize, "CALIBRATION_SEQUENCES", quantize.CALIBRATION_SEQUENCES + 1)
    assert variant_dir(fp32, "int8-static") != before
