"""resolve_model: local HF directories, their hash and shape; bad sources name model.source."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.model import (
    _conversion_dir,
    _convert_gguf,
    check_gguf,
    check_room_to_dequantize,
    file_sha256,
    read_shape,
    resolve_model,
)
from unit.factories import SMOLLM2_SHAPE


def test_resolve_a_local_hf_dir(tiny_model_dir: Path, tiny_model_parameters: int, cache_dir: Path) -> None:
    spec = resolve_model(ModelConfig(source=str(tiny_model_dir)), cache_dir)
    assert spec.format == "hf-dir"
    assert spec.path == tiny_model_dir
    assert spec.name == tiny_model_dir.name
    assert spec.source == str(tiny_model_dir)
    weights = tiny_model_dir / "model.safetensors"
    assert spec.weight_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    shape = spec.shape
    assert (shape.num_layers, shape.hidden_size, shape.num_attention_heads, shape.num_kv_heads) == (
        2,
        64,
        4,
        2,
    )
    assert shape.head_dim == 16
    assert shape.vocab_size == 49152
    assert shape.num_parameters == tiny_model_parameters
    identity = spec.identity()
    assert identity["weight_sha256"] == spec.weight_sha256
    assert identity["num_parameters"] == tiny_model_parameters
    assert identity["format"] == "hf-dir"


def test_the_weight_hash_is_stable(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path / "a")
    b = resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path / "b")
    assert a.weight_sha256 == b.weight_sha256


def test_kv_bytes_per_token() -> None:
    shape = SMOLLM2_SHAPE
    assert shape.kv_bytes_per_token(2) == 2 * 30 * 3 * 64 * 2


def test_read_shape_defaults_kv_heads_and_head_dim(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 3, "hidden_size": 96, "num_attention_heads": 6, "vocab_size": 100})
    )
    shape = read_shape(tmp_path)
    assert (shape.num_kv_heads, shape.head_dim, shape.num_parameters) == (6, 16, 0)
    assert shape.context_length is None  # no max_position_embeddings: the context is not checked


def test_read_shape_reads_a_text_config(tmp_path: Path) -> None:
    text = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": text | {"max_position_embeddings": 512}, "vision_config": {}})
    )
    assert (read_shape(tmp_path).num_layers, read_shape(tmp_path).context_length) == (2, 512)


@pytest.mark.parametrize(
    ("config", "precision"),
    [
        ({"dtype": "bfloat16"}, "bf16"),  # transformers 5's key
        ({"torch_dtype": "float16"}, "fp16"),  # a checkpoint saved by transformers 4
        ({"dtype": "float32"}, "fp32"),
        ({"text_config": {"dtype": "bfloat16"}, "dtype": "float32"}, "bf16"),  # the text model's own
        ({"dtype": "float8_e4m3fn"}, None),  # none that the torch backend runs
        ({}, None),
    ],
)
def test_read_shape_reads_the_checkpoint_precision(
    tmp_path: Path, config: dict, precision: str | None
) -> None:
    decoder = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}
    nested = config.get("text_config", {})
    (tmp_path / "config.json").write_text(json.dumps(config | {"text_config": decoder | nested}))
    assert read_shape(tmp_path).checkpoint_precision == precision


def test_a_dir_without_config_json(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert info.value.field == "model.source"
    assert "config.json" in info.value.problem


def test_a_dir_without_weights(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert info.value.field == "model.source"


GOOD_CONFIG = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("{not json", "cannot be read"),
        ("{}", "lacks 'num_attention_heads'"),
        ("[1, 2]", "cannot be read"),
        (json.dumps(GOOD_CONFIG | {"num_attention_heads": 0}), "cannot be read"),
    ],
)
def test_a_broken_config_json_names_model_source(
    tmp_path: Path, cache_dir: Path, config: str, says: str
) -> None:
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert info.value.field == "model.source"
    assert "config.json" in info.value.problem and says in info.value.problem


@pytest.mark.parametrize("weights", [b"", b"\x08" + b"\x00" * 7 + b"{broken}", b"\x02" + b"\x00" * 7 + b"[]"])
def test_a_weight_file_without_a_safetensors_header_names_it(
    tmp_path: Path, cache_dir: Path, weights: bytes
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GOOD_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(weights)
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert info.value.field == "model.source"
    assert "model.safetensors is not a safetensors file" in info.value.problem


@pytest.mark.parametrize("header_len", [2**63, 2**64 - 1, 100])
def test_a_header_longer_than_the_file_is_not_read(tmp_path: Path, cache_dir: Path, header_len: int) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GOOD_CONFIG))
    (tmp_path / "model.safetensors").write_bytes(header_len.to_bytes(8, "little") + b"{}")
    with pytest.raises(UserError) as info:  # not a MemoryError from reading exabytes
        resolve_model(ModelConfig(source=str(tmp_path)), cache_dir)
    assert info.value.field == "model.source"
    assert "model.safetensors is not a safetensors file" in info.value.problem
    assert f"{header_len} bytes" in info.value.problem


LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 269060552\n"
)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "model.gguf"])
def test_a_git_lfs_pointer_says_to_pull_the_weights(tmp_path: Path, cache_dir: Path, name: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GOOD_CONFIG))
    (tmp_path / name).write_text(LFS_POINTER)
    source = tmp_path / name if name.endswith(".gguf") else tmp_path
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(source)), cache_dir)
    assert info.value.field == "model.source"
    assert f"{name} is a Git LFS pointer" in info.value.problem
    assert "git lfs pull" in info.value.fix


def test_a_file_that_is_not_gguf(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(path)), cache_dir)
    assert info.value.field == "model.source"


def _tiny_gguf(path: Path) -> Path:
    """A small but whole GGUF file: two float32 tensors."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("a", np.zeros((64, 64), np.float32))
    writer.add_tensor("b", np.ones((8,), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "keep", [0, 30, 200, -16], ids=["empty", "header-cut", "tensors-cut", "last-bytes-cut"]
)
def test_an_empty_or_truncated_gguf_names_model_source(tmp_path: Path, cache_dir: Path, keep: int) -> None:
    whole = _tiny_gguf(tmp_path / "whole.gguf")
    check_gguf(whole)  # the whole file passes
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:keep])
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(cut)), cache_dir)
    assert info.value.field == "model.source"
    assert str(cut) in info.value.problem
    assert ("empty" if keep == 0 else "truncated") in info.value.problem
    assert not (cache_dir / "models").exists()  # nothing converted, nothing left behind


def test_the_cli_exits_2_on_an_empty_gguf(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from optimizer import cli

    empty = tmp_path / "model.gguf"
    empty.write_bytes(b"")
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        code = cli.main(
            [f"model={empty}", f"output_dir={tmp_path / 'run'}", f"store_path={tmp_path / 't.db'}"]
        )
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert code == 2
    assert capsys.readouterr().err.startswith("error: model.source: ")


@pytest.mark.parametrize(
    "source",
    [
        "/definitely/missing/model-dir",
        "./missing-model",
        "bogus",
        "~/no-such-dir/model",
    ],
)
def test_bad_sources(source: str, cache_dir: Path) -> None:
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=source), cache_dir)
    assert info.value.field == "model.source"


def test_an_unreachable_hub_id(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked: list[tuple[str, str | None]] = []

    def offline(repo_id: str, revision: str | None = None, **kwargs) -> str:
        asked.append((repo_id, revision))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source="nobody-here/no-such-model", revision="v1"), cache_dir)
    assert info.value.field == "model.source"
    assert "OSError" in info.value.problem
    assert asked == [("nobody-here/no-such-model", "v1")]


def test_file_sha256_is_memoized_in_the_cache_dir(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello wattsmith")
    expected = hashlib.sha256(b"hello wattsmith").hexdigest()
    assert file_sha256(path, cache_dir) == expected
    memo = json.loads((cache_dir / "hashes.json").read_text())
    assert list(memo.values()) == [expected]
    (key,) = memo
    assert key.startswith(str(path.resolve()))
    # the memo is what is read back for an unchanged file
    (cache_dir / "hashes.json").write_text(json.dumps({key: "memoized"}))
    assert file_sha256(path, cache_dir) == "memoized"
    # a changed file (size or mtime) is hashed again
    path.write_bytes(b"hello wattsmith, changed")
    os.utime(path, ns=(1, 1))
    assert file_sha256(path, cache_dir) == hashlib.sha256(b"hello wattsmith, changed").hexdigest()


def test_file_sha256_without_cache_and_with_a_corrupt_memo(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    expected = hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(path) == expected
    (cache_dir / "hashes.json").write_text("{torn")
    assert file_sha256(path, cache_dir) == expected
    assert expected in json.loads((cache_dir / "hashes.json").read_text()).values()


def test_resolving_writes_the_memo_only_in_the_given_cache(tiny_model_dir: Path, cache_dir: Path) -> None:
    resolve_model(ModelConfig(source=str(tiny_model_dir)), cache_dir)
    assert (cache_dir / "hashes.json").is_file()


def _tensors(count: int) -> dict:
    import torch

    return {"a.weight": torch.zeros(count, 2), "b.bias": torch.zeros(count)}  # 3 x count parameters


def test_the_parameter_count_reads_the_files_transformers_loads(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(GOOD_CONFIG))
    save_file(_tensors(10), str(tmp_path / "model.safetensors"))
    save_file(_tensors(10), str(tmp_path / "consolidated.safetensors"))  # the same weights, again
    assert read_shape(tmp_path).num_parameters == 30

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(GOOD_CONFIG))
    save_file(_tensors(4), str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"c.weight": torch.zeros(5)}, str(sharded / "model-00002-of-00002.safetensors"))
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00001-of-00002.safetensors",
    }
    weight_map["c.weight"] = "model-00002-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert read_shape(sharded).num_parameters == 12 + 5

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(GOOD_CONFIG))
    torch.save(_tensors(7), legacy / "pytorch_model.bin")  # no safetensors: counted, not 0
    torch.save({"not": "weights"}, legacy / "training_args.bin")  # beside checkpoints, not one of them
    assert read_shape(legacy).num_parameters == 21
    torch.save(_tensors(2), legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert read_shape(legacy).num_parameters == 6  # the legacy format, read without mmap


def test_a_gguf_served_as_it_is_is_not_converted(tmp_path: Path, cache_dir: Path) -> None:
    """An engine that loads the GGUF itself (llama.cpp) rebuilds a recipe from the file: no
    de-quantized copy (tens of GB for an 8B model) is written; the shape comes from its metadata."""
    spec = resolve_model(ModelConfig(source="smollm2"), cache_dir, convert_gguf=False)
    assert spec.format == "gguf" and spec.path.suffix == ".gguf" and spec.path.is_file()
    assert not (cache_dir / "models").exists()
    # SmolLM2-135M's config and the count a conversion gives; a GGUF file has no torch dtype
    assert spec.shape == replace(SMOLLM2_SHAPE, checkpoint_precision=None)
    assert spec.weight_sha256 == file_sha256(spec.path)
    # a conversion cached by an fp32 search is not used: the same file, the same identity
    planted = _conversion_dir(cache_dir, spec.weight_sha256)
    planted.mkdir(parents=True)
    (planted / "config.json").write_text("{}")
    assert resolve_model(ModelConfig(source="smollm2"), cache_dir, convert_gguf=False) == spec
    bare = _tiny_gguf(tmp_path / "bare.gguf")  # tensors without the architecture's shape keys
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(bare)), cache_dir, convert_gguf=False)
    assert info.value.field == "model.source" and "shape metadata" in info.value.problem


def test_a_dequantization_this_machine_cannot_hold_is_refused_before_it_starts(tmp_path: Path) -> None:
    """Refused with the way out (llama.cpp against the GGUF as shipped), not after minutes of
    de-quantizing into memory that runs out."""
    check_room_to_dequantize(tmp_path / "m.gguf", SMOLLM2_SHAPE, tmp_path / "cache")  # 0.5 GiB: fits
    huge = replace(SMOLLM2_SHAPE, num_parameters=10**14)  # 400 TB in fp32
    with pytest.raises(UserError) as info:
        check_room_to_dequantize(tmp_path / "m.gguf", huge, tmp_path / "cache")
    assert info.value.field == "model.source"
    assert "100000.0 B parameters" in info.value.problem and "GiB of memory" in info.value.problem
    assert "GiB are free in cache_dir" in info.value.problem
    assert "quality.reference=gguf" in info.value.fix


def _fake_transformers(monkeypatch: pytest.MonkeyPatch, save: Callable[[Path], None]) -> None:
    """transformers whose GGUF 'model' saves with `save` (no model is loaded)."""

    class Model:
        config = types.SimpleNamespace()

        def save_pretrained(self, out: str | Path) -> None:
            save(Path(out))

    class Auto:
        @staticmethod
        def from_pretrained(*_args: object, **_kwargs: object) -> Model:
            return Model()

    fake = types.ModuleType("transformers")
    fake.AutoModelForCausalLM = Auto  # type: ignore[attr-defined]
    fake.AutoTokenizer = Auto  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", fake)


def _dead_pid() -> int:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(gone.stdout)


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_conversion_leaves_no_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    """A Ctrl-C or a full disk while de-quantizing removes the half-written fp32 copy (~30 GiB for
    an 8B model) and is raised as it was."""

    def save(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"\0" * 1024)
        raise error

    _fake_transformers(monkeypatch, save)
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(error):
        _convert_gguf(tmp_path / "m.gguf", models / "gguf-0123456789abcdef")
    assert list(models.iterdir()) == []


def test_a_conversion_removes_copies_left_by_killed_conversions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILLed conversion cleans nothing up: the next one removes the copies of this host's
    processes that are gone, and keeps a live process's and another host's."""
    from optimizer.processes import host_tag

    def save(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")

    _fake_transformers(monkeypatch, save)
    models = tmp_path / "models"
    out = models / "gguf-0123456789abcdef"
    dead, live = _dead_pid(), os.getppid()
    kept = [f"{out.name}.tmp-{live}-{host_tag()}", f"{out.name}.tmp-{dead}-other-host", "gguf-ffff.tmp-1"]
    removed = [f"{out.name}.tmp-{dead}-{host_tag()}", f"{out.name}.tmp-{dead}"]  # the last: no host
    for name in kept + removed:
        (models / name).mkdir(parents=True)
    _convert_gguf(tmp_path / "m.gguf", out)
    assert sorted(p.name for p in models.iterdir()) == sorted([out.name, *kept])
    assert (out / "config.json").is_file()
