"""TensorRT engines are built for rows of at most TRT_MAX_TOKENS: a run with longer requests or
quality windows excludes its TensorRT candidates in the plan (they were exported, calibrated and
built, then failed: `1025 tokens per row exceed the TensorRT profile's 1024`)."""

from __future__ import annotations

from optimizer.backends.onnx.trt_profile import TRT_MAX_TOKENS
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.config import compose_run_config
from optimizer.search.plan import _within_row_limits
from optimizer.space import Candidate
from unit.factories import torch_candidate

NATIVE = Candidate(TensorRTSettings(precision="fp16"), 4, 0)
ORT_TRT = Candidate(OrtOnnxSettings(provider="tensorrt", precision="fp16"), 4, 0)
ORT_CUDA = Candidate(OrtOnnxSettings(provider="cuda", precision="fp16"), 4, 0)
TORCH = torch_candidate()


def test_requests_longer_than_the_profile_exclude_the_tensorrt_candidates() -> None:
    cfg = compose_run_config(["workload=batch"])
    kept, excluded = _within_row_limits([NATIVE, ORT_TRT, ORT_CUDA, TORCH], TRT_MAX_TOKENS + 1, cfg)
    assert kept == [ORT_CUDA, TORCH]
    assert [c for c, _ in excluded] == [NATIVE, ORT_TRT]
    assert all(f"at most {TRT_MAX_TOKENS} tokens" in reason for _, reason in excluded)


def test_quality_windows_longer_than_the_profile_are_named() -> None:
    cfg = compose_run_config(["workload=batch", f"quality.seq_tokens={TRT_MAX_TOKENS + 64}"])
    _, excluded = _within_row_limits([NATIVE], 100, cfg)
    assert "quality.seq_tokens" in excluded[0][1]


def test_rows_within_the_profile_keep_every_candidate() -> None:
    cfg = compose_run_config(["workload=batch"])
    everything = [NATIVE, ORT_TRT, ORT_CUDA, TORCH]
    assert _within_row_limits(everything, TRT_MAX_TOKENS, cfg) == (everything, [])
