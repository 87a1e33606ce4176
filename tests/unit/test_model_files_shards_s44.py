"""A shard that model.safetensors.index.json lists but the folder lacks (an interrupted download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.model import read_shape, resolve_model

DECODER = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16}


def _sharded(folder: Path) -> Path:
    """A two-shard checkpoint whose second shard was never downloaded."""
    import torch
    from safetensors.torch import save_file

    (folder / "config.json").write_text(json.dumps(DECODER))
    save_file({"a.weight": torch.zeros(4, 2)}, str(folder / "model-00001-of-00002.safetensors"))
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder / "model.safetensors.index.json"


@pytest.mark.parametrize("resolve", [True, False])
def test_a_shard_missing_from_the_folder_is_named_as_missing(
    tmp_path: Path, cache_dir: Path, resolve: bool
) -> None:
    index = _sharded(tmp_path)
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir) if resolve else read_shape(tmp_path)
    error = info.value
    assert error.field == "model.source"
    assert "model-00002-of-00002.safetensors" in error.problem and "missing" in error.problem
    assert str(index) in error.problem and "not a safetensors file" not in error.problem
    assert "download" in error.fix and "model-00002-of-00002.safetensors" in error.fix
    assert not (cache_dir / "hashes.json").exists()  # refused before any weight is hashed
