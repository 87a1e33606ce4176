"""The memory prefilter counts a tied model's native TensorRT engine with both vocab matrices.

The engine is built from the same constant-folded ONNX export as ort-onnx, whose tied lm_head
MatMul reads an initializer of its own (the folded Transpose of the embedding; measured in
test_prefilter_ort_head.py). TensorRT keeps both constants; the footprint counted the embedding
alone, so a tied build was under by one vocab x hidden matrix (Llama-3-8B shape: 1.96 GiB fp32,
0.98 GiB fp16, 0.49 GiB int8)."""

from __future__ import annotations

import pytest

from optimizer.backends.registry import spec_for
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.search.prefilter import estimate_memory_bytes, vocab_matrices_bytes
from optimizer.space import Candidate

WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)
VOCAB, HIDDEN = 128256, 4096
MATRIX = VOCAB * HIDDEN
UNTIED = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248, tied_embeddings=False)
TIED = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248 - MATRIX)


def _need(settings: TensorRTSettings, shape: ModelShape) -> int:
    return estimate_memory_bytes(Candidate(settings, 4, 0), shape, WORKLOAD)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_tied_engine_needs_as_much_as_the_untied_one(precision: str) -> None:
    settings = TensorRTSettings(precision)
    assert _need(settings, TIED) == pytest.approx(_need(settings, UNTIED), abs=2)


@pytest.mark.parametrize(("precision", "embedding", "head"), [("fp16", 2.0, 2.0), ("int8", 4.0, 1.0)])
def test_tied_vocab_matrices_at_their_own_widths(precision: str, embedding: float, head: float) -> None:
    """int8: the embedding's Gather (no Q/DQ) at fp16, lm_head's quantized MatMul at int8."""
    settings = TensorRTSettings(precision)
    fp = spec_for(settings).footprint(settings, TIED.num_layers)
    assert vocab_matrices_bytes(fp, TIED, 1) == MATRIX * embedding + MATRIX * head
