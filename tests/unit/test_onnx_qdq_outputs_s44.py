"""The int8-static (QDQ) model quantizes the weight MatMuls' inputs, not their outputs: a quantized
lm_head output puts the logits on an int8 grid, so the greedy argmax ties and the quality probe
scores coarse log-probs. Tiny random Llama, CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'wattsmith[ort]')")
pytest.importorskip(
    "onnxscript", reason="the dynamo exporter needs onnxscript (pip install 'wattsmith[ort]')"
)

from optimizer.backends.onnx import quantize  # noqa: E402
from optimizer.backends.onnx.export import MODEL_FILE, exported_decoder  # noqa: E402
from optimizer.backends.ort_onnx.backend import OrtSteps, make_session  # noqa: E402
from optimizer.config import ModelConfig  # noqa: E402
from optimizer.model import resolve_model  # noqa: E402

pytestmark = pytest.mark.slow  # an export and a calibration (~15 s on 2 cores)

VOCAB = 256


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("qdq")
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model", safe_serialization=True)
    spec = resolve_model(ModelConfig(source=str(root / "model")), root / "cache")
    windows = np.random.default_rng(0).integers(0, VOCAB, (quantize.CALIBRATION_SEQUENCES, 65)).tolist()
    with pytest.MonkeyPatch.context() as patch:  # no tokenizer in this model: seeded windows instead
        patch.setattr(quantize, "calibration_windows", lambda *args, **kwargs: windows)
        return quantize.static_int8_qdq(exported_decoder(spec, root / "cache"), spec)


def test_no_matmul_output_is_quantized(static_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(static_dir / MODEL_FILE), load_external_data=False).graph
    matmul_outputs = {o for n in graph.node if n.op_type == "MatMul" for o in n.output}
    quantized = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in matmul_outputs]
    assert quantized == []
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the inputs still are


def test_the_logits_are_not_on_an_int8_grid(static_dir: Path) -> None:
    session = make_session(static_dir / MODEL_FILE, ["CPUExecutionProvider"], 1)
    steps = OrtSteps(session, "cpu", 0, None)
    ids = np.random.default_rng(1).integers(0, VOCAB, (4, 16))
    logits = steps.logits(ids)
    steps.close()
    assert len(np.unique(logits)) > 1000  # an int8 grid has at most 256 values
    top2 = np.sort(logits, -1)[..., -2:]
    assert not (top2[..., 0] == top2[..., 1]).any()  # no tied greedy choice


def test_only_the_static_variant_is_built_again() -> None:
    # its options changed; the dynamic and fp16 conversions did not, so their keys stay
    assert quantize.variant_identity("int8-dynamic")["format"] == quantize.VARIANT_FORMAT == 1
    assert quantize.variant_identity("fp16")["format"] == 1
    assert quantize.variant_identity("int8-static")["format"] == 2
