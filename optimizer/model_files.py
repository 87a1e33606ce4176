"""What a model's files say by themselves: their sha256, whether they are whole, their parameter
count and a GGUF's shape. Nothing here converts or loads a model (model.py does)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.errors import UserError
from optimizer.files import write_atomically
from optimizer.gguf_widths import GgufWidths, gguf_widths

if TYPE_CHECKING:
    from gguf import GGUFReader

# How a Git LFS pointer file begins: what a clone without git-lfs holds instead of the weights
LFS_POINTER = b"version https://git-lfs"
# llama.cpp's names for the files of a split GGUF (gguf-split, convert_hf_to_gguf --split-max-size)
SPLIT_GGUF = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf")
# The files a tokenizer's vocabulary is saved in (fast, sentencepiece, BPE, WordPiece)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


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
    # a GGUF's tensors as shipped (None: other models); not compared: a conversion has its shape
    gguf: GgufWidths | None = dataclass_field(default=None, compare=False)

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


def gguf_shape(path: Path, reader: GGUFReader, *rest: GGUFReader) -> ModelShape:
    """Shape facts from a GGUF file's metadata (llama.cpp's keys, under its architecture's name),
    read by the reader `check_gguf` returned for it; a split GGUF's tensors from all its files
    (`rest`: the readers of the splits after the first, which holds the metadata)."""
    tensors = [t for r in (reader, *rest) for t in r.tensors]

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
            num_parameters=sum(int(t.n_elements) for t in tensors),
            context_length=int(context) if context else None,
            # llama.cpp writes an output tensor only when the model has its own lm_head
            tied_embeddings=not any(t.name == "output.weight" for t in tensors),
            gguf=gguf_widths(tensors),
        )
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise UserError(
            "model.source",
            f"{path} lacks the {arch} shape metadata llama.cpp writes ({exc})",
            "convert the model again with llama.cpp's convert_hf_to_gguf.py",
        ) from None


def check_gguf(path: Path, split: bool = False) -> GGUFReader:
    """Raise a UserError naming model.source unless `path` is a whole GGUF file: not empty, with a
    readable header, and long enough for every tensor it lists (a cut-off download is not). The
    reader that parsed it is returned for what else the file says (`gguf_shape`). One `split` of
    a split GGUF may hold no tensors (llama.cpp can write the metadata alone in the first)."""
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
    _check_not_unnamed_split(path, reader, split)
    if not tensors and not split:
        raise UserError("model.source", f"{path} holds no tensors", fix)
    needed = max((t.data_offset + t.n_bytes for t in tensors), default=0)
    if needed > size:
        raise UserError(
            "model.source",
            f"{path} is truncated: its tensors need {needed} bytes, the file has {size}",
            fix,
        )
    return reader


def _check_not_unnamed_split(path: Path, reader: GGUFReader, split: bool) -> None:
    """Refuse a file of a split GGUF read as a whole one (renamed, or a link to a blob): its name
    lacks the suffix llama.cpp finds the other files by, so they would be neither hashed nor loaded."""
    field = reader.fields.get("split.count")
    count = int(field.contents()) if field is not None else 1
    if split or count < 2:
        return
    no_field = reader.fields.get("split.no")
    number = int(no_field.contents()) + 1 if no_field is not None else 1
    raise UserError(
        "model.source",
        f"{path} is file {number} of a GGUF split in {count}, named without llama.cpp's split suffix",
        f"give every file its name from the split (NAME-00001-of-{count:05d}.gguf...) in one folder "
        "and point model= at the first",
    )


def split_link_target(path: Path) -> Path:
    """`path`, or the target of a link to a file of a split GGUF when the link's own name lacks
    llama.cpp's suffix: llama.cpp finds the other files from the name it loads. A link named by
    the split (a hub cache's, to a blob) is kept: its siblings are links too."""
    if SPLIT_GGUF.fullmatch(path.name) is None and path.is_symlink():
        target = path.resolve()
        if SPLIT_GGUF.fullmatch(target.name):
            return target
    return path


def gguf_splits(path: Path) -> list[Path]:
    """The files of the GGUF model at `path`: itself, or every file of a split one named by
    llama.cpp's convention (llama.cpp loads the others from the first's name; each holds part of
    the weights, so the model's hash and parameter count cover them all), beside a link's target
    when the link is named without the convention."""
    target = split_link_target(path)
    match = SPLIT_GGUF.fullmatch(target.name)
    if match is None or int(match[3]) < 2:
        return [path]
    named = f"{path} (a link to {target})" if target != path else str(path)
    prefix, number, count = match[1], int(match[2]), int(match[3])
    files = [target.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    if number != 1:
        raise UserError(
            "model.source",
            f"{named} is file {number} of a GGUF split in {count}",
            f"point model= at its first file, {files[0]}, which llama.cpp loads the others from",
        )
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(
            "model.source",
            f"{named} is the first of {count} files of a split GGUF; {', '.join(missing)} missing beside it",
            "download every file of the split into the same folder",
        )
    return files


def check_tokenizer(path: Path) -> None:
    """Raise a UserError naming model.source unless the model directory holds a tokenizer, for
    what loads one from it (a measurement): without one transformers fails with an error about
    sentencepiece, a Git LFS pointer in its place on JSON. Not in resolve_model: a recipe's engine
    can be built and served token ids from weights alone."""
    found = [path / n for n in TOKENIZER_FILES if (path / n).is_file()] + sorted(path.glob("*.tiktoken"))
    for file in found:
        check_not_lfs_pointer(file, "the tokenizer")
    if found or _remote_tokenizer(path):
        return
    raise UserError(
        "model.source",
        f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)} or a .tiktoken file)",
        "save the model's tokenizer into it: AutoTokenizer.from_pretrained(ORIGIN).save_pretrained(DIR)",
    )


def _remote_tokenizer(path: Path) -> bool:
    """Whether tokenizer_config.json names its own code (auto_map): which files it reads is its own."""
    try:
        return "auto_map" in json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_not_lfs_pointer(path: Path, what: str = "the weights") -> None:
    """Raise a UserError naming model.source when `path` is a Git LFS pointer, not `what`."""
    try:
        with path.open("rb") as handle:
            start = handle.read(len(LFS_POINTER))
    except OSError:
        return  # unreadable: the format's own check says so
    if start == LFS_POINTER:
        raise UserError(
            "model.source",
            f"{path} is a Git LFS pointer, not {what} (the repository was cloned without git-lfs)",
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


def remote_code_sha256(model_dir: Path) -> dict[str, str]:
    """sha256 of the Python files of a model directory, by name: the modeling code that
    trust_remote_code runs (config.json's auto_map names them, and their relative imports are
    files beside them). Not weights: two checkpoints with other code must not share a build."""
    return {f.name: file_sha256(f) for f in sorted(model_dir.glob("*.py")) if f.is_file()}


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers loads: model.safetensors, else the index's shards, else
    every one but a `consolidated` copy (repositories that ship both would count twice). In
    transformers' order: save_pretrained re-saving a sharded model whole removes the old shards, not
    their index."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(
                "model.source", f"{index} cannot be read ({exc})", "re-save the model with save_pretrained"
            ) from None
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:  # an interrupted download: transformers would fail on the first one it opens
            raise UserError(
                "model.source",
                f"{index} lists {', '.join(missing)}, missing from {path}",
                f"download or copy the missing shard(s) {', '.join(missing)} into {path}",
            )
        return [path / shard for shard in shards]
    return sorted(f for f in path.glob("*.safetensors") if not f.name.startswith("consolidated"))


def loaded_weight_files(path: Path) -> list[Path]:
    """The checkpoint files transformers loads from a model directory: its safetensors, else its
    PyTorch shards. What lies beside them (a .bin copy left an unpulled LFS pointer, a consolidated
    copy, a Trainer's training_args.bin and optimizer.pt) is not the model: neither hashed nor checked."""
    return _weight_files(path) or sorted(path.glob("pytorch_model*.bin"))


def _count_bin_parameters(path: Path) -> int:
    """Parameters of PyTorch .bin checkpoints, read onto the meta device (no weights in memory)."""
    import torch

    total = 0
    for file in sorted(path.glob("pytorch_model*.bin")):  # not training_args.bin and the like
        try:
            try:
                state = torch.load(file, map_location="meta", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                state = torch.load(file, map_location="meta", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
            raise UserError(
                "model.source", f"{file} is not a readable PyTorch checkpoint ({exc})", "re-save the model"
            ) from None
        total += sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    return total


def _safetensors_header(file: Path) -> Any:
    """The JSON header of a safetensors file. Its length is checked against the file's size before
    reading: the first 8 bytes of another kind of file can ask for exabytes."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > size - 8:
            raise ValueError(f"it announces a {header_len} bytes header, the file has {size} bytes")
        return json.loads(handle.read(header_len))


def count_parameters(path: Path) -> int:
    """Parameters of the checkpoint transformers loads from a model directory, read from the
    safetensors headers (or a .bin checkpoint on the meta device): no weights in memory."""
    files = _weight_files(path)
    if not files:  # a .bin-only directory
        return _count_bin_parameters(path)
    total = 0
    for file in files:
        try:
            header = _safetensors_header(file)
            shapes = [meta["shape"] for key, meta in header.items() if key != "__metadata__"]
        except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(
                "model.source",
                f"{file} is not a safetensors file (its header cannot be read: {exc})",
                "re-save the model with save_pretrained (an interrupted copy leaves such files)",
            ) from None
        for shape in shapes:
            count = 1
            for dim in shape:
                count *= dim
            total += count
    return total
