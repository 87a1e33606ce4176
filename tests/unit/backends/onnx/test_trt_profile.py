"""TensorRT optimization profiles (pure arithmetic: no TensorRT needed)."""

from __future__ import annotations

import pytest

from optimizer.backends.onnx.export import DecoderLayout
from optimizer.backends.onnx.trt_profile import (
    TRT_MAX_TOKENS,
    TRT_MIN_PROFILE_BATCH,
    check_context,
    profile_batch,
    profile_dims,
    profile_shapes,
)

LAYOUT = DecoderLayout(num_layers=2, kv_heads=3, head_dim=64)


def test_profile_covers_prefill_decode_and_scoring() -> None:
    dims = profile_dims(LAYOUT, max_batch=8, max_tokens=128)
    assert set(dims) == {"input_ids", "logits_positions", *LAYOUT.past_names}
    assert dims["input_ids"] == {"min": (1, 1), "opt": (8, 1), "max": (8, 128)}
    assert dims["logits_positions"]["max"] == (128,)  # scoring keeps every position
    past = dims["past.1.value"]
    assert past["min"] == (1, 3, 0, 64)  # prefill: an empty cache
    assert past["max"] == (8, 3, 127, 64)  # the last decode step of a full context
    for d in dims.values():
        assert all(lo <= opt <= hi for lo, opt, hi in zip(d["min"], d["opt"], d["max"], strict=True))


def test_profile_strings_for_the_execution_provider() -> None:
    shapes = profile_shapes(LAYOUT, max_batch=4, max_tokens=16)
    assert shapes["min"].startswith("input_ids:1x1,logits_positions:1,past.0.key:1x3x0x64,")
    assert shapes["max"].split(",")[-1] == "past.1.value:4x3x15x64"
    assert len(shapes["opt"].split(",")) == 2 + 4


def test_batch_and_context_bounds() -> None:
    assert profile_batch(1) == TRT_MIN_PROFILE_BATCH
    assert profile_batch(64) == 64
    check_context(TRT_MAX_TOKENS - 1, 1)
    with pytest.raises(ValueError, match="TRT_MAX_TOKENS"):
        check_context(TRT_MAX_TOKENS, 1)
