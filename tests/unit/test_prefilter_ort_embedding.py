"""The memory prefilter counts the input embedding of ONNX builds at the width the build keeps it.

ONNX Runtime's quantizers (ort-onnx int8-dynamic/int8-static, and the QDQ model TensorRT takes)
quantize the weight MatMuls only: the embedding is a Gather and keeps the export's float. The genai
builder's MatMulNBits likewise takes lm_head but not the embedding's Gather, which stays at the
build's activation dtype, except where a tied int4 build's GatherBlockQuantized reads lm_head's
own quantized matrix.

Measured on the tiny random Llama (vocab 49152, hidden 64; 2026-12-07, onnxruntime 1.32.0,
onnxruntime-genai 0.18.0), initializers listed with onnx.load + numpy_helper:

- ort-onnx fp32 export: embedding Gather float32 (49152, 64) 12,582,912 B; lm_head MatMul float32
  (64, 49152) 12,582,912 B (a transposed second copy also when tied: constant folding).
- ort-onnx int8-dynamic and int8-static: embedding float32 12,582,912 B (4 B/param); lm_head int8
  (64, 49152) 3,145,728 B (1 B/param) plus a per-channel float32 scale and int8 zero point per
  vocab column (5 B per hidden-size parameters: ~0.1 % at hidden 4096, not counted).
- genai fp32 / fp16 (cuda): one float32 / float16 matrix when tied (Transpose -> Gather), two
  when untied.
- genai int8 cpu: embedding Gather float32 12,582,912 B; lm_head uint8 Q8 3,145,728 B + float32
  scales (49152, 2) 393,216 B = 1.125 B/param; tied or untied alike. cuda: the embedding float16
  (6,291,456 B), the scales float16.
- genai int4 cpu: tied, GatherBlockQuantized reads lm_head's Q4 1,572,864 B + scales 393,216 B
  (0.625 B/param) and no float embedding exists; untied, embedding Gather float32 12,582,912 B.
- genai int4 + int8 lm_head cpu: body Q4 (0.5 B/param + scales), lm_head Q8 + scales 1.125
  B/param; untied, embedding Gather float32. Tied, the builder's GatherBlockQuantized reads
  `lm_head.MatMul.weight_Q8G32`, which the model does not hold (the load failure
  tests/unit/backends/ort_genai/test_backend.py pins): only untied builds run.

A tied matrix untied by the ort-onnx export (and a genai int8 build) into a float embedding plus
an lm_head copy, and an untied genai int4 build's float32 embedding: test_prefilter_ort_head.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from optimizer.backends.base import Footprint
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.registry import spec_for
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape, ModelSpec
from optimizer.search.prefilter import estimate_memory_bytes
from optimizer.space import Candidate

WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)
VOCAB, HIDDEN = 128256, 4096
MATRIX = VOCAB * HIDDEN
# Llama-3-8B: untied, lm_head's 525 M parameters counted in the 8.03 B
LLAMA3_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248, tied_embeddings=False)
TIED_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248 - MATRIX)
OTHERS = LLAMA3_8B.num_parameters - 2 * MATRIX  # neither the embedding nor lm_head


def _need(settings: object, shape: ModelShape = LLAMA3_8B) -> int:
    return estimate_memory_bytes(Candidate(settings, 4, 1), shape, WORKLOAD)  # type: ignore[arg-type]


def _footprint(settings: object) -> Footprint:
    return spec_for(settings).footprint(settings, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("full", "quantized"),
    [
        (OrtOnnxSettings(), OrtOnnxSettings(quantization="int8-dynamic")),
        (OrtOnnxSettings(), OrtOnnxSettings(quantization="int8-static")),
        (
            OrtOnnxSettings(provider="tensorrt"),
            OrtOnnxSettings(provider="tensorrt", quantization="int8-static"),
        ),
    ],
)
def test_ort_int8_keeps_the_embedding_in_fp32(full: OrtOnnxSettings, quantized: OrtOnnxSettings) -> None:
    """The fp32 and int8 builds hold the same fp32 embedding; only the MatMul weights (lm_head
    among them) shrink to 1 byte. It was counted at 1 byte: 3 x 525 M = 1.58 GB under."""
    assert _need(full) - _need(quantized) == pytest.approx((OTHERS + MATRIX) * (4 - 1), abs=2)


@pytest.mark.parametrize(
    ("full", "int8", "act"),
    [
        (OrtGenaiSettings(), OrtGenaiSettings(precision="int8"), 4.0),
        (
            OrtGenaiSettings(provider="cuda", precision="fp16"),
            OrtGenaiSettings(provider="cuda", precision="int8"),
            2.0,
        ),
    ],
)
def test_genai_int8_keeps_the_embedding_at_the_activation_dtype(
    full: OrtGenaiSettings, int8: OrtGenaiSettings, act: float
) -> None:
    """MatMulNBits takes lm_head (1 byte + an fp32 scale per 32) but not the embedding's Gather,
    which stays fp32 on the CPU and fp16 on CUDA, tied or not."""
    weight = 1 + 4 / 32
    assert _need(full) - _need(int8) == pytest.approx((OTHERS + MATRIX) * (act - weight), abs=2)
    # tied, the float build holds lm_head and the Transpose ORT folds for the embedding's Gather, the
    # int8 build the embedding and an lm_head of its own
    tied_drop = _need(full, TIED_8B) - _need(int8, TIED_8B)
    assert tied_drop == pytest.approx(OTHERS * (act - weight) + MATRIX * (act - weight), abs=2)


def test_genai_int4_with_an_int8_lm_head_keeps_the_body_in_int4() -> None:
    """Only lm_head is int8; the body stays int4 and the (untied: a tied one does not load)
    embedding fp32. The whole model was counted at int8: 0.5 byte x 7.5 B = 3.75 GB over, and
    the embedding 2.9 bytes x 525 M = 1.5 GB under."""
    with_head = OrtGenaiSettings(precision="int4", int8_lm_head=True)
    int8_width, int4_width = 1 + 4 / 32, 0.5 + 4 / 32
    fp = _footprint(with_head)
    assert (fp.weight_bytes, fp.embedding_bytes, fp.output_bytes) == (int4_width, 4.0, int8_width)
    assert _need(OrtGenaiSettings()) - _need(with_head) == pytest.approx(
        OTHERS * (4 - int4_width) + MATRIX * (4 - int8_width), abs=2
    )


def test_tensorrt_int8_counts_the_embedding_at_fp32_width() -> None:
    """The QDQ model TensorRT builds from holds the embedding in fp32 without Q/DQ nodes (measured
    above). It was counted at 1 byte, then at 2 (the FP16 flag, which lets TensorRT use fp16 but
    does not force it, and is off on a target without fp16): now at 4, the bound."""
    assert _need(TensorRTSettings("fp16")) - _need(TensorRTSettings("int8")) == pytest.approx(
        (OTHERS + MATRIX) * (2 - 1) - MATRIX * 2, abs=2
    )


# --- the widths against a tiny build's initializers -------------------------------------------

TINY_VOCAB, TINY_HIDDEN = 49152, 64


def _graph(model_file: Path) -> tuple[dict[str, int], list[Any]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_file))
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    return sizes, list(model.graph.node)


def _embedding_bytes(sizes: dict[str, int], nodes: list[Any]) -> int:
    """Bytes of the initializers the embedding's Gather reads, through a Reshape or Transpose."""
    producers = {out: n for n in nodes for out in n.output}
    gather = next(
        n for n in nodes if n.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in n.input
    )
    read = set()
    for name in gather.input:
        source = producers.get(name)
        if source is not None and source.op_type in ("Reshape", "Transpose"):
            name = source.input[0]
        if name in sizes:
            read.add(name)
    return sum(sizes[name] for name in read)


def _width(fp: Footprint, which: str) -> float:
    value = fp.embedding_bytes if which == "embedding" else fp.output_bytes
    return fp.weight_bytes if value is None else value


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path]:
    """The tiny Llama untied (its own lm_head): both widths show, and int4 + int8 lm_head loads."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    root = tmp_path_factory.mktemp("embedding-widths")
    model_dir = root / "untied"
    shutil.copytree(tiny_model_dir, model_dir)
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(str(tiny_model_dir), tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(model_dir, safe_serialization=True)
    return resolve_model(ModelConfig(source=str(model_dir)), root), root


@pytest.mark.slow
def test_a_tiny_ort_int8_build_holds_the_footprints_widths(tiny: tuple[ModelSpec, Path]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from optimizer.backends.onnx.export import MODEL_FILE, exported_decoder
    from optimizer.backends.onnx.quantize import dynamic_int8

    spec, workdir = tiny
    sizes, nodes = _graph(dynamic_int8(exported_decoder(spec, workdir)) / MODEL_FILE)
    fp = _footprint(OrtOnnxSettings(quantization="int8-dynamic"))
    matrix = TINY_VOCAB * TINY_HIDDEN
    assert _embedding_bytes(sizes, nodes) == matrix * _width(fp, "embedding")
    lm_head = [n for n in sizes if n.endswith("_quantized") and sizes[n] == matrix]  # int8: 1 B each
    assert len(lm_head) == 1 and sizes[lm_head[0]] == matrix * _width(fp, "output")


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings", [OrtGenaiSettings(precision="int8"), OrtGenaiSettings(precision="int4", int8_lm_head=True)]
)
def test_a_tiny_genai_build_holds_the_footprints_widths(
    tiny: tuple[ModelSpec, Path], settings: OrtGenaiSettings
) -> None:
    pytest.importorskip("onnxruntime_genai")
    from optimizer.backends.ort_genai.backend import ensure_build

    spec, workdir = tiny
    sizes, nodes = _graph(ensure_build(spec, settings, workdir) / "model.onnx")
    fp = _footprint(settings)
    matrix = TINY_VOCAB * TINY_HIDDEN
    assert _embedding_bytes(sizes, nodes) == matrix * _width(fp, "embedding")
    assert sum(v for n, v in sizes.items() if n.startswith("lm_head.MatMul.")) == matrix * _width(
        fp, "output"
    )
    # the body: each MatMul's packed weight (bits per parameter in its suffix) and its scales
    body = {n: v for n, v in sizes.items() if n.startswith("model.layers.") and ".MatMul.weight" in n}
    params = sum(v * 8 // int(n[-1]) for n, v in body.items() if n[-3:] in ("_Q4", "_Q8"))
    assert sum(body.values()) == params * fp.weight_bytes
