"""resolve_model hashes and checks the weight files transformers loads, not what sits beside them:
a .bin copy of a safetensors checkpoint (often an LFS pointer left unpulled), a consolidated copy,
a Trainer's training_args.bin and optimizer.pt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from optimizer import model as model_module
from optimizer.config import ModelConfig
from optimizer.model import resolve_model

DECODER = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16}
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 3520000\n"


def _tensors(value: float) -> dict:
    import torch

    return {"a.weight": torch.full((4, 2), value), "b.bias": torch.full((3,), value)}


def _checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DECODER))
    save_file(_tensors(1.0), str(folder / "model.safetensors"))
    return folder


def _hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files resolve_model reads whole to hash them."""
    names: list[str] = []
    real = model_module.file_sha256

    def recording(path: Path, cache_dir: Path | None = None) -> str:
        names.append(path.name)
        return real(path, cache_dir)

    monkeypatch.setattr(model_module, "file_sha256", recording)
    return names


def test_an_unpulled_bin_copy_beside_safetensors_is_not_refused(tmp_path: Path, cache_dir: Path) -> None:
    """`git lfs pull --include "*.safetensors"` (the usual way to skip a repository's duplicate
    .bin) leaves pytorch_model.bin a pointer: transformers loads the safetensors and so may we."""
    folder = _checkpoint(tmp_path / "m")
    (folder / "pytorch_model.bin").write_text(LFS_POINTER)
    spec = resolve_model(ModelConfig(source=str(folder)), cache_dir)
    assert spec.weight_sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert spec.shape.num_parameters == 11


def test_files_beside_the_checkpoint_are_neither_read_nor_in_the_identity(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import save_file

    alone = resolve_model(ModelConfig(source=str(_checkpoint(tmp_path / "alone"))), cache_dir)
    folder = _checkpoint(tmp_path / "trainer")
    torch.save(_tensors(1.0), folder / "pytorch_model.bin")  # the same weights, the other format
    save_file(_tensors(1.0), str(folder / "consolidated.safetensors"))
    torch.save({"lr": 1e-4}, folder / "training_args.bin")
    torch.save({"state": _tensors(2.0)}, folder / "optimizer.pt")  # twice the model, in a real run
    hashed = _hashed(monkeypatch)
    spec = resolve_model(ModelConfig(source=str(folder)), cache_dir)
    assert hashed == ["model.safetensors"]
    assert spec.weight_sha256 == alone.weight_sha256  # the same weights: the same model


def test_a_sharded_checkpoint_is_hashed_over_its_shards_alone(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DECODER))
    save_file({"a.weight": torch.zeros(4, 2)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b.bias": torch.zeros(3)}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00002-of-00002.safetensors",
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    before = resolve_model(ModelConfig(source=str(folder)), cache_dir).weight_sha256
    save_file(_tensors(0.0), str(folder / "consolidated.safetensors"))  # Mistral's repositories ship both
    hashed = _hashed(monkeypatch)
    spec = resolve_model(ModelConfig(source=str(folder)), cache_dir)
    assert sorted(set(hashed)) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert spec.weight_sha256 == before and spec.shape.num_parameters == 11


def test_a_bin_checkpoint_is_hashed_without_its_training_args(tmp_path: Path, cache_dir: Path) -> None:
    import torch

    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(DECODER))
    torch.save(_tensors(1.0), folder / "pytorch_model.bin")
    before = resolve_model(ModelConfig(source=str(folder)), cache_dir).weight_sha256
    torch.save({"lr": 1e-4}, folder / "training_args.bin")
    spec = resolve_model(ModelConfig(source=str(folder)), cache_dir)
    assert spec.weight_sha256 == before
    assert before == hashlib.sha256((folder / "pytorch_model.bin").read_bytes()).hexdigest()
