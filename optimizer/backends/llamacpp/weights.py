"""The GGUF a llama.cpp candidate loads: the model's own file, a Hugging Face directory converted
by llama.cpp's converter, or either requantized by llama.cpp's own quantizer. Conversions and
requantized files are build artifacts in the run's cache, keyed by the source weights' hash and,
for a conversion, by what else the converter reads (config, tokenizer files, the converter) and
the packages it imports (gguf, transformers...)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.backends.artifacts import artifact_key, cached_artifact
from optimizer.backends.installed import distribution_version
from optimizer.backends.llamacpp.errors import LlamaCppBuildError
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.model import gguf_file
from optimizer.model_files import file_sha256, model_files_sha256
from optimizer.processes import killed_with_parent

if TYPE_CHECKING:
    from optimizer.model import ModelSpec

# llama.cpp's convert_hf_to_gguf.py (from a llama.cpp checkout; llama-cpp-python ships none)
CONVERTER_ENV = "WATTSMITH_HF_TO_GGUF"
CONVERT_TIMEOUT_SECONDS = 3600
WEIGHTS_FILE = "model.gguf"
# What convert_hf_to_gguf.py reads beside the weights and writes into the GGUF: the hparams (RoPE,
# context length, ...), the vocabulary, special token ids and the chat template
CONVERTER_READS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# What the converter imports and writes the GGUF with (gguf: when its checkout has no gguf-py):
# transformers and tokenizers read the vocabulary, torch and numpy the tensors
CONVERTER_PACKAGES = ("gguf", "transformers", "tokenizers", "sentencepiece", "torch", "numpy")
# llama.cpp's converter imports its checkout's gguf-py (beside it) unless this variable is set
NO_LOCAL_GGUF = "NO_LOCAL_GGUF"


def hf_converter() -> Path | None:
    """llama.cpp's HF -> GGUF converter named by WATTSMITH_HF_TO_GGUF, when that file exists."""
    value = os.environ.get(CONVERTER_ENV)
    path = Path(value).expanduser() if value else None
    return path if path is not None and path.is_file() else None


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown"


def prepared_gguf(model: ModelSpec, settings: LlamaCppSettings, workdir: Path, threads: int) -> Path:
    """The GGUF file these settings load, built into the cache first when it is not there."""
    source = source_gguf(model, workdir)
    if not settings.requantized:
        return source
    options = {"weight_type": settings.weight_type, "llama_cpp_python": llama_cpp_version()}
    if gguf_file(model) is None:  # made from a conversion: keyed by it too (its dir name has its key)
        options["converted"] = source.parent.name
    out = workdir / "llamacpp" / f"{model.weight_sha256[:16]}-{artifact_key(options)}"

    def quantize(tmp: Path) -> dict[str, Any]:
        from optimizer.backends.llamacpp.native import quantize_gguf  # llama_cpp loads here

        quantize_gguf(source, tmp / WEIGHTS_FILE, settings.weight_type, threads)
        return {"source": str(source), "source_sha256": model.weight_sha256, "options": options}

    return cached_artifact(out, quantize, f"llama.cpp {settings.weight_type} weights") / WEIGHTS_FILE


def source_gguf(model: ModelSpec, workdir: Path) -> Path:
    """The model's GGUF file; a Hugging Face directory is converted once (f16) by llama.cpp's
    converter."""
    path = gguf_file(model)
    if path is not None:
        if not path.is_file():
            raise LlamaCppBuildError(f"the model's GGUF {path} is missing")
        return path
    converter = hf_converter()
    if converter is None:
        raise LlamaCppBuildError(
            f"{model.path} is not a GGUF file and no converter is available (set {CONVERTER_ENV})"
        )
    inputs = conversion_inputs(model.path, converter)
    out = workdir / "llamacpp" / f"{model.weight_sha256[:16]}-hf-f16-{artifact_key(inputs)}"

    def convert(tmp: Path) -> dict[str, Any]:
        log_path = tmp.with_name(f"{out.name}.convert.log")
        command = [sys.executable, str(converter), str(model.path), "--outfile", str(tmp / WEIGHTS_FILE)]
        command += ["--outtype", "f16"]
        with log_path.open("w", encoding="utf-8") as handle:
            proc = subprocess.run(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=CONVERT_TIMEOUT_SECONDS,
                check=False,
                preexec_fn=killed_with_parent(),  # a run killed outright must not leave it converting on
            )
        if proc.returncode != 0 or not (tmp / WEIGHTS_FILE).is_file():
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise LlamaCppBuildError(f"{converter.name} exited {proc.returncode}: {tail} (log: {log_path})")
        return {"command": command[1:], "source_sha256": model.weight_sha256, "inputs": inputs}

    return cached_artifact(out, convert, "GGUF conversion (llama.cpp's converter)") / WEIGHTS_FILE


def conversion_inputs(model_dir: Path, converter: Path) -> dict[str, Any]:
    """sha256 of the files the converter reads beside the weights (None: absent) and of the
    converter itself, and the versions of what it imports: the same weights with another config,
    tokenizer, gguf or transformers make another GGUF."""
    return {
        **model_files_sha256(model_dir, CONVERTER_READS),
        "converter": file_sha256(converter),
        "packages": {name: distribution_version(name) for name in CONVERTER_PACKAGES},
        "gguf_py": local_gguf_sha256(converter),
    }


def local_gguf_sha256(converter: Path) -> dict[str, str] | None:
    """sha256 of the checkout's gguf-py the converter imports ahead of the installed gguf, by path
    (its version is not bumped with every commit), or None when it imports the installed one."""
    local = converter.parent / "gguf-py"
    if NO_LOCAL_GGUF in os.environ or not (local / "gguf").is_dir():
        return None
    return {f.relative_to(local).as_posix(): file_sha256(f) for f in sorted((local / "gguf").rglob("*.py"))}
