"""The cache keys of a Hugging Face directory's GGUF conversion and of the requantizations made
from it, over a stand-in converter and quantizer (no llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.backends.artifacts import artifact_key
from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.llamacpp.weights import CONVERTER_ENV, llama_cpp_version, prepared_gguf, source_gguf
from optimizer.model import ModelShape, ModelSpec

# writes config.json's rope_theta and the tokenizer's text into the GGUF, as the real one writes
# the hparams and the vocabulary
CONVERTER = (
    "import json, sys\n"
    "args = sys.argv[1:]\n"
    "cfg = json.load(open(args[0] + '/config.json'))\n"
    "vocab = open(args[0] + '/tokenizer.json').read()\n"
    "open(args[args.index('--outfile') + 1], 'w').write(f\"rope {cfg['rope_theta']} vocab {vocab}\")\n"
)


@pytest.fixture
def hf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text(CONVERTER)
    monkeypatch.setenv(CONVERTER_ENV, str(script))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_config(model_dir, 10000.0)
    (model_dir / "tokenizer.json").write_text("a b c")
    shape = ModelShape(1, 8, 2, 2, 4, 16, 128)
    return ModelSpec("tiny", str(model_dir), model_dir, "hf-dir", "ab" * 32, False, None, shape)


def write_config(model_dir: Path, rope_theta: float) -> None:
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "rope_theta": rope_theta}))


def test_the_conversion_is_keyed_by_config_tokenizer_and_converter(hf_dir: ModelSpec, tmp_path: Path) -> None:
    """Keyed by the weights' hash only, an edited config.json (RoPE, context length, special
    tokens) reused the GGUF converted with the old one."""
    cache = tmp_path / "cache"
    first = source_gguf(hf_dir, cache)
    assert first.read_text() == "rope 10000.0 vocab a b c"
    assert source_gguf(hf_dir, cache) == first  # nothing changed: reused
    write_config(hf_dir.path, 500000.0)
    edited = source_gguf(hf_dir, cache)
    assert edited != first and edited.read_text() == "rope 500000.0 vocab a b c"
    (hf_dir.path / "tokenizer.json").write_text("a b c d")
    assert source_gguf(hf_dir, cache).read_text() == "rope 500000.0 vocab a b c d"
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(CONVERTER.replace("rope {", "rope_theta {"))  # another llama.cpp's converter
    assert source_gguf(hf_dir, cache).read_text() == "rope_theta 500000.0 vocab a b c d"
    assert first.parent.name.startswith(f"{'ab' * 8}-hf-f16-")  # the weights' hash, then the rest


def test_requantizations_follow_their_conversion(
    hf_dir: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quantize_gguf(source: Path, out: Path, weight_type: str, threads: int) -> None:
        out.write_text(f"{weight_type} of {source.read_text()}")

    monkeypatch.setattr(native, "quantize_gguf", quantize_gguf)
    cache, q8 = tmp_path / "cache", LlamaCppSettings("Q8_0")
    first = prepared_gguf(hf_dir, q8, cache, threads=1)
    assert first.read_text() == "Q8_0 of rope 10000.0 vocab a b c"
    assert prepared_gguf(hf_dir, q8, cache, threads=1) == first
    write_config(hf_dir.path, 500000.0)
    assert prepared_gguf(hf_dir, q8, cache, threads=1).read_text() == "Q8_0 of rope 500000.0 vocab a b c"


def test_a_gguf_models_requantization_keeps_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF is its own source: its requantizations stay keyed by its hash and the options only
    (the caches of earlier runs stay valid)."""
    monkeypatch.setattr(
        native, "quantize_gguf", lambda source, out, weight_type, threads: out.write_text("q")
    )
    gguf = tmp_path / "model.gguf"
    gguf.write_text("GGUF")
    model = ModelSpec(
        "g", str(gguf), gguf, "gguf", "cd" * 32, False, None, ModelShape(1, 8, 2, 2, 4, 16, 128)
    )
    out = prepared_gguf(model, LlamaCppSettings("Q8_0"), tmp_path / "cache", threads=1)
    options = {"weight_type": "Q8_0", "llama_cpp_python": llama_cpp_version()}
    assert out.parent.name == f"{'cd' * 8}-{artifact_key(options)}"
