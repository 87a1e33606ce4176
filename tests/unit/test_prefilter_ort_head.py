"""The memory prefilter counts the embedding and lm_head of ONNX builds as the builds hold them,
whether the model ties them or not.

Measured on the tiny random Llama (vocab 49152, hidden 64; 2026-12-07, onnxruntime 1.32.0,
onnxruntime-genai 0.18.0), TIED, initializers listed with onnx.load + numpy_helper:

- ort-onnx fp32 export: the embedding's Gather reads `model.lm_head.weight` float32 (49152, 64)
  12,582,912 B, lm_head's MatMul `val_319` float32 (64, 49152) 12,582,912 B: constant folding
  turned the tied Transpose into a second initializer. fp16 conversion: both float16 (6,291,456 B
  each); int8-dynamic: the embedding float32, lm_head int8 3,145,728 B (+ a per-column scale).
- genai int8 cpu: embedding float32 12,582,912 B; lm_head Q8 3,145,728 B + float32 scales
  393,216 B: two matrices, as when untied.
- genai int4 cpu: one matrix, lm_head's Q4 1,572,864 B + scales 393,216 B, which the embedding's
  GatherBlockQuantized reads (untied: a float32 embedding besides, 12,582,912 B).
- genai fp32: one matrix, lm_head.MatMul.weight (64, 49152), read by the Gather through a Transpose
  (not rebuilt below: the layout every other backend's footprint assumes of a tied model).

Before, a tied model's ort-onnx and genai int8 builds were counted with no lm_head, and an untied
genai int4 build's float32 embedding at the int4 width.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from optimizer.backends.base import Footprint
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.registry import spec_for
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape, ModelSpec
from optimizer.search.prefilter import estimate_memory_bytes, vocab_matrices_bytes
from optimizer.space import Candidate

WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)
VOCAB, HIDDEN = 128256, 4096
MATRIX = VOCAB * HIDDEN
# Llama-3-8B (untied, lm_head's 525 M parameters in its 8.03 B) and the same model tied
UNTIED_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248, tied_embeddings=False)
TIED_8B = ModelShape(32, HIDDEN, 32, 8, 128, VOCAB, 8_030_261_248 - MATRIX)
OTHERS = UNTIED_8B.num_parameters - 2 * MATRIX  # neither the embedding nor lm_head
INT8, INT4 = 1 + 4 / 32, 0.5 + 4 / 32  # genai's widths at block 32: one fp32 scale per block

ORT_ONNX = [
    OrtOnnxSettings(),
    OrtOnnxSettings(quantization="int8-dynamic"),
    OrtOnnxSettings(quantization="int8-static"),
    OrtOnnxSettings(provider="cuda", precision="fp16"),
    OrtOnnxSettings(provider="tensorrt", quantization="int8-static"),
]
GENAI_INT8 = [OrtGenaiSettings(precision="int8"), OrtGenaiSettings(provider="cuda", precision="int8")]


def _need(settings: object, shape: ModelShape) -> int:
    return estimate_memory_bytes(Candidate(settings, 4, 1), shape, WORKLOAD)  # type: ignore[arg-type]


def _footprint(settings: object) -> Footprint:
    return spec_for(settings).footprint(settings, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("settings", ORT_ONNX + GENAI_INT8, ids=lambda s: f"{s.BACKEND}-{s.label()}")
def test_a_build_that_unties_lm_head_needs_as_much_for_a_tied_model(settings: object) -> None:
    """The tied model's build holds the same two matrices as the untied one's (one parameter
    count apart: the untied lm_head's). The tied one was counted without lm_head: under by 525 M
    x its width (ort-onnx fp32 2.1 GB, int8 0.53 GB; genai int8 0.59 GB)."""
    assert _need(settings, TIED_8B) == pytest.approx(_need(settings, UNTIED_8B), abs=2)


def test_a_tied_8b_ort_int8_build_counts_lm_head_at_int8() -> None:
    """fp32 -> int8 shrinks every MatMul (lm_head among them) from 4 bytes to 1; the embedding
    stays fp32 in both. It was OTHERS x 3: lm_head's 1.6 GB drop not counted either way."""
    drop = _need(OrtOnnxSettings(), TIED_8B) - _need(OrtOnnxSettings(quantization="int8-dynamic"), TIED_8B)
    assert drop == pytest.approx((OTHERS + MATRIX) * (4 - 1), abs=2)


@pytest.mark.parametrize(("provider", "act"), [("cpu", 4.0), ("cuda", 2.0)])
def test_genai_int4_counts_an_untied_embedding_at_the_activation_dtype(provider: str, act: float) -> None:
    """Untied, the int4 build's embedding is a float Gather (fp32 on the CPU: counted at 0.625 B
    before, 1.77 GB under for an 8B); tied, the one int4 matrix lm_head's MatMulNBits and the
    embedding's GatherBlockQuantized share (unchanged)."""
    full = OrtGenaiSettings(provider=provider, precision="fp32" if provider == "cpu" else "fp16")
    int4 = OrtGenaiSettings(provider=provider, precision="int4")
    untied_drop = _need(full, UNTIED_8B) - _need(int4, UNTIED_8B)
    assert untied_drop == pytest.approx((OTHERS + MATRIX) * (act - INT4), abs=2)  # the embedding: none
    tied_drop = _need(full, TIED_8B) - _need(int4, TIED_8B)
    # tied, the float build holds lm_head and its folded Transpose; the int4 build one matrix
    assert tied_drop == pytest.approx((OTHERS + MATRIX) * (act - INT4) + MATRIX * act, abs=2)
    assert _need(int4, UNTIED_8B) - _need(int4, TIED_8B) == pytest.approx(MATRIX * act, abs=2)


def test_vocab_matrices_of_8b_builds() -> None:
    """The embedding + lm_head bytes of each build of the 8B, tied and untied, on the CPU."""
    expected = {
        OrtOnnxSettings(): (MATRIX * 8, MATRIX * 8),
        OrtOnnxSettings(quantization="int8-dynamic"): (MATRIX * 5, MATRIX * 5),
        OrtGenaiSettings(): (MATRIX * 8, MATRIX * 8),
        OrtGenaiSettings(precision="int8"): (MATRIX * (4 + INT8), MATRIX * (4 + INT8)),
        OrtGenaiSettings(precision="int4"): (MATRIX * INT4, MATRIX * (4 + INT4)),
        OrtGenaiSettings(precision="int4", int8_lm_head=True): (MATRIX * INT8, MATRIX * (4 + INT8)),
    }
    for settings, (tied, untied) in expected.items():
        fp = _footprint(settings)
        assert vocab_matrices_bytes(fp, TIED_8B, 1) == pytest.approx(tied), settings
        assert vocab_matrices_bytes(fp, UNTIED_8B, 1) == pytest.approx(untied), settings


# --- against tiny builds' initializers ---------------------------------------------------------


def _vocab_initializer_bytes(model_file: Path, matrix: int) -> int:
    """Bytes of the initializers of at least matrix / 8 bytes: the embedding and lm_head with
    genai's block scales (matrix / 8 at block 32). The tiny body's largest weight is 32 KiB; the
    int8 lm_head's per-column scale (matrix / 16) is left out as the footprint leaves it out."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_file))
    sizes = [numpy_helper.to_array(i).nbytes for i in model.graph.initializer]
    return sum(size for size in sizes if size >= matrix // 8)


@pytest.fixture(scope="module")
def tiny_pair(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, tuple[ModelSpec, Path]]:
    """The tiny Llama tied (as conftest makes it) and untied, each resolved in a workdir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    root = tmp_path_factory.mktemp("vocab-matrices")
    untied_dir = root / "untied"
    shutil.copytree(tiny_model_dir, untied_dir)
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(str(tiny_model_dir), tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(untied_dir, safe_serialization=True)
    pair = {}
    for tied, source in ((True, tiny_model_dir), (False, untied_dir)):
        workdir = root / ("tied" if tied else "untied-work")
        workdir.mkdir()
        spec = resolve_model(ModelConfig(source=str(source)), workdir)
        assert spec.shape.tied_embeddings is tied
        pair[tied] = (spec, workdir)
    return pair


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "tied"),
    [
        (OrtOnnxSettings(), True),
        (OrtOnnxSettings(quantization="int8-dynamic"), True),
        (OrtOnnxSettings(provider="cuda", precision="fp16"), True),
        (OrtGenaiSettings(precision="int8"), True),
        (OrtGenaiSettings(precision="int4"), True),
        (OrtGenaiSettings(precision="int4"), False),
    ],
    ids=lambda v: ("tied" if v else "untied") if isinstance(v, bool) else f"{v.BACKEND}-{v.label()}",
)
def test_a_tiny_build_holds_the_vocab_matrices_counted(
    tiny_pair: dict[bool, tuple[ModelSpec, Path]], settings: OrtOnnxSettings | OrtGenaiSettings, tied: bool
) -> None:
    spec, workdir = tiny_pair[tied]
    if isinstance(settings, OrtOnnxSettings):
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        from optimizer.backends.onnx.export import MODEL_FILE
        from optimizer.backends.ort_onnx.backend import onnx_model_for

        model_file = onnx_model_for(settings, spec, workdir) / MODEL_FILE
    else:
        pytest.importorskip("onnxruntime_genai")
        from optimizer.backends.ort_genai.backend import ensure_build

        model_file = ensure_build(spec, settings, workdir) / "model.onnx"
    matrix = spec.shape.vocab_size * spec.shape.hidden_size
    counted = vocab_matrices_bytes(_footprint(settings), spec.shape, 1)
    assert _vocab_initializer_bytes(model_file, matrix) == counted
