"""Native TensorRT backend: what can be checked without a GPU. The engine build and the decode loop
run in tests/gpu/test_ort_gpu.py (marked gpu, skipped here with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.backends.registry import build_engine
from optimizer.backends.tensorrt.backend import TensorRTBackend, TensorRTBuildError
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.space import Candidate


def test_the_registry_builds_with_the_tensorrt_backend(make_target, tmp_path: Path) -> None:
    with pytest.raises(TensorRTBuildError, match="NVIDIA GPU"):
        build_engine(None, Candidate(TensorRTSettings(), 1, 0), make_target(), tmp_path)  # type: ignore[arg-type]


def test_a_cpu_target_is_refused_before_any_work(make_target, tmp_path: Path) -> None:
    with pytest.raises(TensorRTBuildError, match="NVIDIA GPU"):
        TensorRTBackend().build(None, Candidate(TensorRTSettings(), 1, 0), make_target(), tmp_path)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing exported


def test_dtype_mapping_covers_the_decoder_io() -> None:
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (pip install 'wattsmith[tensorrt]')")
    import torch

    from optimizer.backends.tensorrt.backend import torch_dtype

    assert torch_dtype(trt.float32) is torch.float32
    assert torch_dtype(trt.int64) is torch.int64
    assert torch_dtype(trt.float16) is torch.float16
