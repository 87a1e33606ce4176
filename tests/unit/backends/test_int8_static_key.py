"""The int8-static (QDQ) model is keyed by its calibration windows' token ids: the export's key
covers the weights and config.json, not the tokenizer that turns the calibration text into those
windows, so a tokenizer change (here: one that now begins sequences with a BOS) calibrates again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from optimizer.backends.onnx import quantize
from optimizer.model import ModelSpec
from optimizer.model_files import ModelShape


def spec_at(folder: Path) -> ModelSpec:
    """The same weights hash and shape whatever the folder's tokenizer: one export for both."""
    return ModelSpec(
        "m", str(folder), folder, "hf-dir", "a" * 64, False, None, ModelShape(2, 64, 4, 2, 16, 256, 1)
    )


def with_bos(source: Path, out: Path) -> Path:
    """A copy of `source` whose tokenizer prepends its first added token to every sequence."""
    shutil.copytree(source, out)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    bos = tokenizer["added_tokens"][0]
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": bos["content"], "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            bos["content"]: {"id": bos["content"], "ids": [bos["id"]], "tokens": [bos["content"]]}
        },
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return out


@pytest.fixture
def variant_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories static_int8_qdq asks the cache for; nothing is quantized."""
    asked: list[Path] = []

    def cached(out: Path, build: Callable[[Path], dict[str, Any]], what: str) -> Path:
        asked.append(out)
        return out

    monkeypatch.setattr(quantize, "cached_artifact", cached)
    return asked


def test_a_tokenizer_change_calibrates_again(
    tiny_model_dir: Path, tmp_path: Path, variant_dirs: list[Path]
) -> None:
    fp32 = tmp_path / "onnx" / "export" / "fp32"
    bos = with_bos(tiny_model_dir, tmp_path / "bos")
    assert (
        quantize.calibration_windows(bos, False, 65, 8)[0][1:]
        == quantize.calibration_windows(tiny_model_dir, False, 65, 8)[0][:-1]
    )  # the same text, shifted by the BOS

    plain = quantize.static_int8_qdq(fp32, spec_at(tiny_model_dir))
    assert quantize.static_int8_qdq(fp32, spec_at(tiny_model_dir)) == plain  # still reused
    shifted = quantize.static_int8_qdq(fp32, spec_at(bos))
    assert shifted != plain and shifted.parent == plain.parent and shifted.name.startswith("int8-static-")
