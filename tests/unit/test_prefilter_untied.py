"""The memory prefilter and an untied lm_head: a second vocab x hidden matrix, counted at the
precision each backend's quantization keeps it in; tied models' estimates are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape, read_shape
from optimizer.model_files import check_gguf, gguf_shape
from optimizer.search.prefilter import estimate_memory_bytes
from optimizer.space import Candidate
from unit.factories import SMOLLM2_SHAPE

WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)
VOCAB, HIDDEN = 128256, 4096
MATRIX = VOCAB * HIDDEN
# Llama-3-8B: tie_word_embeddings false, lm_head's 525 M parameters counted in the 8.03 B
LLAMA3_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248, tied_embeddings=False)
# the same layers with lm_head tied to the embedding (one matrix fewer)
TIED_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248 - MATRIX)


def _need(settings: object, shape: ModelShape, tensor_parallel: int = 1) -> int:
    candidate = Candidate(settings, batch_size=4, threads=0, tensor_parallel=tensor_parallel)  # type: ignore[arg-type]
    return estimate_memory_bytes(candidate, shape, WORKLOAD)


@pytest.mark.parametrize(
    ("quantization", "weight_bytes"),
    [("int8-weight", 1.0), ("fp8-static", 1.0), ("int4-weight", 0.5 + 4 / 128)],
)
def test_an_untied_lm_head_torch_keeps_in_bf16_is_counted_in_bf16(
    quantization: str, weight_bytes: float
) -> None:
    """torchao and fp8-static leave the output projection alone (excluded_weights): the engine holds
    the embedding and lm_head in bf16, the other weights quantized. Was ~0.5 GB (int8) under."""
    plain = _need(TorchSettings(precision="bf16"), LLAMA3_8B)
    quantized = _need(TorchSettings(precision="bf16", quantization=quantization), LLAMA3_8B)
    held = 2 * MATRIX * 2 + (LLAMA3_8B.num_parameters - 2 * MATRIX) * weight_bytes
    assert plain - quantized == pytest.approx(LLAMA3_8B.num_parameters * 2 - held, abs=2)
    # torch-cb quantizes with the torch backend's quantize_weights: its lm_head stays bf16 too
    served = ContinuousBatchingSettings(precision="bf16", quantization=quantization)
    assert _need(served, LLAMA3_8B) == pytest.approx(_need(served, TIED_8B) + MATRIX * 2, abs=2)


@pytest.mark.parametrize(
    ("settings", "untied_adds"),
    [
        # lm_head is a weight MatMul, quantized; the export holds it apart from a tied model's too
        (OrtOnnxSettings(quantization="int8-dynamic"), 0.0),
        # MatMulNBits takes lm_head too; untied, the embedding is a float32 Gather besides it
        (OrtGenaiSettings(precision="int4"), 4.0),
        (LlamaCppSettings("Q4_K_M"), None),  # output.weight at Q6_K, within the 8.5-bit bound
    ],
)
def test_an_untied_lm_head_other_quantizers_take_counts_at_the_weights_precision(
    settings: object, untied_adds: float | None
) -> None:
    adds = _weight_bytes(settings) if untied_adds is None else untied_adds
    assert _need(settings, LLAMA3_8B) == _need(settings, TIED_8B) + MATRIX * adds


def _weight_bytes(settings: object) -> float:
    from optimizer.backends.registry import spec_for

    return spec_for(settings).footprint(settings, 32).weight_bytes  # type: ignore[arg-type]


def test_an_untied_lm_head_is_sharded_under_tensor_parallel() -> None:
    """transformers' tp_plan shards lm_head by column ("colwise_gather_output"); the embedding is
    not in the plan: each rank holds all of it."""
    one, two = (
        _need(TorchSettings(precision="bf16"), LLAMA3_8B),
        _need(TorchSettings(precision="bf16"), LLAMA3_8B, 2),
    )
    kv = 4 * (64 + 32) * LLAMA3_8B.kv_bytes_per_token(2)
    assert one - two == pytest.approx((LLAMA3_8B.num_parameters - MATRIX) * 2 / 2 + kv / 2, abs=2)


@pytest.mark.parametrize(
    ("name", "settings", "shape", "tensor_parallel", "pinned"),
    [
        (
            "smollm2 int8-weight",
            TorchSettings(precision="bf16", quantization="int8-weight"),
            SMOLLM2_SHAPE,
            1,
            711_690_560,
        ),
        ("smollm2 fp32", TorchSettings(), SMOLLM2_SHAPE, 1, 1_098_130_688),
        (
            "8B fp8-static",
            TorchSettings(precision="bf16", quantization="fp8-static"),
            TIED_8B,
            1,
            8_636_293_120,
        ),
        ("8B bf16 tp2", TorchSettings(precision="bf16"), TIED_8B, 2, 8_611_127_296),
    ],
)
def test_tied_estimates_are_unchanged(
    name: str, settings: object, shape: ModelShape, tensor_parallel: int, pinned: int
) -> None:
    """Pinned from the prefilter before lm_head had a precision of its own."""
    assert _need(settings, shape, tensor_parallel) == pinned, name


def _config(tmp_path: Path, **fields: object) -> Path:
    decoder = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}
    if "text_config" in fields:  # a composite model: the decoder's shape is in its text config
        fields = fields | {"text_config": decoder | dict(fields["text_config"])}  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text(json.dumps(decoder | fields))
    return tmp_path


@pytest.mark.parametrize(
    ("fields", "tied"),
    [
        ({"tie_word_embeddings": False}, False),
        ({"tie_word_embeddings": True}, True),
        ({}, True),  # transformers 4 wrote no key for its default
        (
            {"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": True}},
            False,
        ),  # the top-level ties
    ],
)
def test_read_shape_reads_tie_word_embeddings(tmp_path: Path, fields: dict, tied: bool) -> None:
    assert read_shape(_config(tmp_path, **fields)).tied_embeddings is tied


@pytest.mark.parametrize("with_output", [True, False])
def test_a_gguf_is_untied_when_it_has_an_output_tensor(tmp_path: Path, with_output: bool) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_vocab_size(16)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    if with_output:
        writer.add_tensor("output.weight", np.zeros((16, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_shape(path, check_gguf(path)).tied_embeddings is not with_output


def test_torch_cb_counts_the_embedding_quantize_weights_keeps() -> None:
    """torch-cb's quantized candidates counted the embedding at the quantized width (8,110,956,544
    bytes for a tied int8 8B), though quantize_weights keeps it bf16: 0.5 GB under."""
    served = ContinuousBatchingSettings(precision="bf16", quantization="int8-weight")
    assert _need(served, TIED_8B) == 8_110_956_544 + MATRIX * (2 - 1)
