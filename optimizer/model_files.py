"""What a model's files say by themselves: their sha256, whether they are whole, and a GGUF's
shape. Nothing here converts or loads a model (model.py does)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.errors import UserError
from optimizer.files import write_atomically

if TYPE_CHECKING:
    from gguf import GGUFReader

# How a Git LFS pointer file begins: what a clone without git-lfs holds instead of the weights
LFS_POINTER = b"version https://git-lfs"


@dataclass(frozen=True)
class ModelShape:
    """What the memory and roofline arithmetic needs, and the precision the checkpoint ships in:
    from config.json and the weights, or a GGUF."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_parameters: int
    context_length: int | None = None  # positions it was trained for; None when not recorded
    # the precision transformers loads the checkpoint in by default (its config's dtype): fp32,
    # bf16 or fp16; None for a GGUF file or a dtype that is none of them
    checkpoint_precision: str | None = None
    # lm_head is the input embedding (tie_word_embeddings); an untied one is a second vocab x hidden
    # matrix in num_parameters, which quantization may keep at another precision
    tied_embeddings: bool = True
    # transformers has a tensor-parallel plan for the architecture (what tp_size > 1 needs); False
    # only when it is known to have none (OPT, Falcon, GPT-2...)
    tensor_parallel_plan: bool = True

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """Bytes of K and V cache one token occupies across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element


# Renamed keywords that transformers' config classes still take in __post_init__, not in their
# attribute_map: BLOOM's and Falcon's checkpoints (bigscience/bloom-560m) write n_embed.
LEGACY_NAMES = {"bloom": {"hidden_size": "n_embed"}, "falcon": {"hidden_size": "n_embed"}}


def transformers_names(section: dict[str, Any]) -> dict[str, Any]:
    """A config.json section with the names transformers reads it by added: GPT-2's n_head as
    num_attention_heads, MPT's d_model as hidden_size... from the attribute_map of the config class
    for its model_type (a class attribute: no config or model is built), and the key-value heads
    the classes of multi-query families derive. A name the section has itself wins, as it does in
    transformers; a model_type it does not know (remote code) keeps its keys as they are."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = section.get("model_type")
    model_type = model_type if isinstance(model_type, str) else ""
    try:
        config_class: Any = CONFIG_MAPPING[model_type]
    except Exception:  # noqa: BLE001 - no model_type, or one this transformers does not know
        config_class = None
    names = {**(getattr(config_class, "attribute_map", None) or {}), **LEGACY_NAMES.get(model_type, {})}
    resolved = dict(section)
    for name, stored in names.items():
        if name not in resolved and stored in section:
            resolved[name] = section[stored]
    if "num_key_value_heads" not in resolved:
        resolved["num_key_value_heads"] = _derived_kv_heads(section, model_type, config_class)
    return resolved


def _derived_kv_heads(section: dict[str, Any], model_type: str, config_class: Any) -> Any:
    """The key-value heads that Falcon's, GPT-BigCode's and DBRX's config classes derive in
    __post_init__ (their config.json has no num_key_value_heads), else None: as many as heads."""
    if model_type in ("falcon", "gpt_bigcode"):
        # one shared K/V head unless multi_query is off (absent: the class default, True)
        if section.get("multi_query", getattr(config_class, "multi_query", False)) and not (
            section.get("new_decoder_architecture")
        ):
            return 1
        return section.get("num_kv_heads")  # Falcon's name; None for GPT-BigCode
    attn = section.get("attn_config")
    return attn.get("kv_n_heads") if model_type == "dbrx" and isinstance(attn, dict) else None


def gguf_shape(path: Path, reader: GGUFReader) -> ModelShape:
    """Shape facts from a GGUF file's metadata (llama.cpp's keys, under its architecture's name),
    read by the reader `check_gguf` returned for it."""

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    arch = value("general.architecture")
    try:
        heads = int(value(f"{arch}.attention.head_count"))
        hidden = int(value(f"{arch}.embedding_length"))
        kv_heads = value(f"{arch}.attention.head_count_kv")
        head_dim = value(f"{arch}.attention.key_length")
        vocab = value(f"{arch}.vocab_size") or len(value("tokenizer.ggml.tokens") or ())
        context = value(f"{arch}.context_length")
        return ModelShape(
            num_layers=int(value(f"{arch}.block_count")),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=int(kv_heads) if kv_heads else heads,
            head_dim=int(head_dim) if head_dim else hidden // heads,
            vocab_size=int(vocab),
            num_parameters=sum(int(t.n_elements) for t in reader.tensors),
            context_length=int(context) if context else None,
            # llama.cpp writes an output tensor only when the model has its own lm_head
            tied_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        )
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise UserError(
            "model.source",
            f"{path} lacks the {arch} shape metadata llama.cpp writes ({exc})",
            "convert the model again with llama.cpp's convert_hf_to_gguf.py",
        ) from None


def check_gguf(path: Path) -> GGUFReader:
    """Raise a UserError naming model.source unless `path` is a whole GGUF file: not empty, with a
    readable header, and long enough for every tensor it lists (a cut-off download is not). The
    reader that parsed it is returned for what else the file says (`gguf_shape`)."""
    from gguf import GGUFReader

    fix = "download the file again, or point model= at another .gguf file or a model directory"
    check_not_lfs_pointer(path)
    size = path.stat().st_size
    if size == 0:
        raise UserError("model.source", f"{path} is empty", fix)
    try:
        reader = GGUFReader(path)
        tensors = reader.tensors
    except Exception as exc:  # any failure to parse: a truncated or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError("model.source", f"{path} is truncated or not a GGUF file ({reason})", fix) from None
    if not tensors:
        raise UserError("model.source", f"{path} holds no tensors", fix)
    needed = max(t.data_offset + t.n_bytes for t in tensors)
    if needed > size:
        raise UserError(
            "model.source",
            f"{path} is truncated: its tensors need {needed} bytes, the file has {size}",
            fix,
        )
    return reader


def check_not_lfs_pointer(path: Path) -> None:
    """Raise a UserError naming model.source when `path` is a Git LFS pointer, not weights."""
    try:
        with path.open("rb") as handle:
            start = handle.read(len(LFS_POINTER))
    except OSError:
        return  # unreadable: the format's own check says so
    if start == LFS_POINTER:
        raise UserError(
            "model.source",
            f"{path} is a Git LFS pointer, not the weights (the repository was cloned without git-lfs)",
            "run `git lfs pull` in the model's repository (install git-lfs first), then run again",
        )


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file, remembered per (path, size, mtime) when a cache dir is given."""
    stat = path.stat()
    memo = cache_dir / "hashes.json" if cache_dir else None
    memo_key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    known: dict[str, str] = {}
    if memo and memo.is_file():
        try:
            known = json.loads(memo.read_text())
        except json.JSONDecodeError:
            known = {}
        if memo_key in known:
            return known[memo_key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo:
        memo.parent.mkdir(parents=True, exist_ok=True)
        known[memo_key] = value
        write_atomically(memo, json.dumps(known, indent=0))  # workers hash at once
    return value


def model_files_sha256(model_dir: Path, names: Sequence[str]) -> dict[str, str | None]:
    """sha256 of the named files of a model directory (None: absent): what a builder reads beside
    the weights. Two checkpoints with the same weights and another config must not share a build."""
    return {name: file_sha256(f) if (f := model_dir / name).is_file() else None for name in names}
