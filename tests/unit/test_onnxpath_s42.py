"""ONNX export defects found in review (s42): decode steps of a sliding-window model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'wattsmith[ort]')")
pytest.importorskip(
    "onnxscript", reason="the dynamo exporter needs onnxscript (pip install 'wattsmith[ort]')"
)

from optimizer.backends.onnx.export import (  # noqa: E402
    INPUT_IDS,
    LOGITS_POSITIONS,
    MODEL_FILE,
    exported_decoder,
    layout_of,
)
from optimizer.model import ModelSpec  # noqa: E402

pytestmark = pytest.mark.slow  # an export (~5 s on 2 cores)

VOCAB = 256


def test_decode_steps_past_a_sliding_window_match_the_full_forward(tmp_path: Path) -> None:
    """A sliding layer's cache crops its past to the window: fed back as the next step's past, it
    lost how many tokens came before it (RoPE positions and the mask shifted once the context
    outgrew the window)."""
    import onnxruntime as ort
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=0,  # every layer slides
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "qwen2-sliding", safe_serialization=True)
    # what the export reads of a ModelSpec (resolve_model wants a tokenizer, which the export does not)
    spec = cast(
        ModelSpec,
        SimpleNamespace(path=tmp_path / "qwen2-sliding", weight_sha256="0" * 64, trust_remote_code=False),
    )
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits[:, 7:]  # a prefill of 8 tokens, then 4 decode steps

    session = ort.InferenceSession(
        str(exported_decoder(spec, tmp_path / "cache") / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    layout = layout_of([(i.name, i.shape) for i in session.get_inputs()])
    past = {name: np.zeros(layout.empty_past_shape(2), np.float32) for name in layout.past_names}
    logits = []
    for chunk in [ids[:, :8], *ids[:, 8:].split(1, dim=1)]:
        feeds = {INPUT_IDS: chunk.numpy(), LOGITS_POSITIONS: np.array([chunk.shape[1] - 1]), **past}
        outputs = session.run(None, feeds)
        logits.append(outputs[0])
        past = dict(zip(layout.past_names, outputs[2:], strict=True))
    got = torch.from_numpy(np.concatenate(logits, axis=1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
