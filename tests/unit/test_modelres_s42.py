"""resolve_model: a whole checkpoint beside a stale shard index, split GGUF files, and the tokenizer
check a measurement needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.model import resolve_model
from optimizer.model_files import check_tokenizer

DECODER = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 16}
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 3520000\n"


def test_a_whole_checkpoint_is_counted_before_a_stale_shard_index(tmp_path: Path, cache_dir: Path) -> None:
    """save_pretrained re-saving a sharded model whole removes the shards, not their index:
    transformers loads model.safetensors (it looks for it first), so must the parameter count."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(DECODER))
    save_file({"a.weight": torch.zeros(4, 2), "b.bias": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    stale = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(stale))
    spec = resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert spec.shape.num_parameters == 11


def _split_gguf(folder: Path, value: float) -> list[Path]:
    """A llama GGUF of 264 parameters split in two files by gguf's writer (llama.cpp's names)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(folder / "m.gguf"), "llama", split_max_tensors=2)
    writer.add_uint32("llama.block_count", 1)
    writer.add_uint32("llama.embedding_length", 8)
    writer.add_uint32("llama.attention.head_count", 2)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    writer.add_tensor("blk.0.attn_k.weight", np.full((8, 8), value, np.float32))
    writer.add_tensor("output.weight", np.ones((16, 8), np.float32))  # untied, in the second file
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob("m-*.gguf"))


def test_a_split_gguf_is_hashed_and_counted_over_all_its_files(tmp_path: Path, cache_dir: Path) -> None:
    """llama.cpp loads a split GGUF's other files from the first's name: the model's identity
    covers them (another second file is another model, not the cached one) and so does its count."""
    first, second = _split_gguf(tmp_path, 0.0)
    assert (first.name, second.name) == ("m-00001-of-00002.gguf", "m-00002-of-00002.gguf")
    spec = resolve_model(ModelConfig(source=str(first)), cache_dir, convert_gguf=False)
    assert spec.path == first and spec.shape.num_parameters == 128 + 64 + 64 + 128
    assert spec.shape.tied_embeddings is False  # its output.weight is in the second file
    _split_gguf(tmp_path, 1.0)  # the second file's weights change
    again = resolve_model(ModelConfig(source=str(first)), cache_dir, convert_gguf=False)
    assert again.weight_sha256 != spec.weight_sha256


def test_a_split_gguf_that_cannot_be_loaded_names_the_fix(tmp_path: Path, cache_dir: Path) -> None:
    first, second = _split_gguf(tmp_path, 0.0)
    with pytest.raises(UserError) as info:  # transformers reads the first file alone
        resolve_model(ModelConfig(source=str(first)), cache_dir)
    assert info.value.field == "model.source" and "llama-gguf-split --merge" in info.value.fix
    assert not (cache_dir / "models").exists()
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(second)), cache_dir, convert_gguf=False)
    assert "file 2 of a GGUF split in 2" in info.value.problem and str(first) in info.value.fix
    second.unlink()
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(first)), cache_dir, convert_gguf=False)
    assert f"{second.name} missing" in info.value.problem


def test_a_model_directory_without_a_tokenizer_names_model_source(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    check_tokenizer(tiny_model_dir)  # tokenizer.json
    (tmp_path / "config.json").write_text(json.dumps(DECODER))
    with pytest.raises(UserError) as info:
        check_tokenizer(tmp_path)
    assert info.value.field == "model.source" and "has no tokenizer" in info.value.problem
    (tmp_path / "tokenizer.json").write_text(LFS_POINTER)
    with pytest.raises(UserError) as info:
        check_tokenizer(tmp_path)
    assert "tokenizer.json is a Git LFS pointer, not the tokenizer" in info.value.problem
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]}})
    )
    check_tokenizer(tmp_path)  # its own code decides which files it reads


def test_a_measurement_of_a_directory_without_a_tokenizer_names_model_source(tmp_path: Path) -> None:
    """setup's tokenizer and the int8-static calibration check before transformers, whose own
    error for a missing tokenizer is about sentencepiece."""
    from types import SimpleNamespace

    from optimizer.errors import UserError
    from optimizer.measure import setup
    from optimizer.measure.text import calibration_windows

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="has no tokenizer") as raised:
        setup._tokenizer(SimpleNamespace(path=tmp_path, trust_remote_code=False))
    assert raised.value.field == "model.source"
    with pytest.raises(UserError, match="has no tokenizer"):
        calibration_windows(tmp_path, False, 16, 2)
