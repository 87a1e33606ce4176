"""A model directory whose config names code of its own for a model_type transformers does not know
loads only with trust_remote_code: refused when the run resolves it, naming the field, rather than
by every engine and tokenizer load that follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.model import resolve_model

DECODER = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16}
AUTO_MAP = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}


def _remote_model(folder: Path, model_type: str) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    config = {**DECODER, "model_type": model_type, "auto_map": AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"a.weight": torch.zeros(4, 2)}, str(folder / "model.safetensors"))
    return folder


def test_remote_code_without_trust_names_the_field(tmp_path: Path, cache_dir: Path) -> None:
    folder = _remote_model(tmp_path / "custom", "wattsmith_custom")
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(folder)), cache_dir)
    assert info.value.field == "model.trust_remote_code"
    assert "wattsmith_custom" in info.value.problem and "model.trust_remote_code=true" in info.value.fix
    spec = resolve_model(ModelConfig(source=str(folder), trust_remote_code=True), cache_dir)
    assert spec.trust_remote_code and spec.shape.num_parameters == 8


def test_transformers_own_class_loads_without_trust(tmp_path: Path, cache_dir: Path) -> None:
    """Phi-3's and Qwen2's repositories keep an auto_map to their old code: transformers uses its
    own class when trust_remote_code is off, so nothing is refused."""
    folder = _remote_model(tmp_path / "llama", "llama")
    assert resolve_model(ModelConfig(source=str(folder)), cache_dir).trust_remote_code is False
