"""What quantize_weights builds for torchao changed (lm_head left 16-bit): stores must measure
those candidates and their quality again, and every other candidate must keep its keys."""

from __future__ import annotations

import pytest

from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.space import Candidate

BF16 = {"precision": "bf16"}

# (candidate key, numerics key) as stores held them before lm_head was left out of torchao's reach
TORCHAO = [
    (
        Candidate(TorchSettings(**BF16, quantization="int8-dynamic"), 8, 0),
        ("23e6d070c44c8c79", "ea83da85d0cb765a"),
    ),
    (
        Candidate(TorchSettings(**BF16, quantization="int8-weight"), 8, 0),
        ("fc7bc8a8d8109531", "e12c8ad5e2a484f1"),
    ),
    (
        Candidate(TorchSettings(**BF16, quantization="int4-weight", kv_cache="static", compile=True), 8, 0),
        ("41f89896a3b449b7", "5cb53809dcb84f73"),
    ),
    (
        Candidate(TorchSettings(**BF16, quantization="fp8", loop="slots"), 8, 0, replicas=2),
        ("6655043bc592c375", "e51d976eb52d6c40"),
    ),
    (
        Candidate(ContinuousBatchingSettings(quantization="int8-weight"), 8, 0),
        ("68a7b96affdfcb91", "d781eabdefb9c5e4"),
    ),
    (
        Candidate(ContinuousBatchingSettings(quantization="fp8"), 8, 0),
        ("19a59d4b2a5385c6", "a982d4d6e0f51107"),
    ),
]
UNCHANGED = [
    (
        Candidate(TorchSettings(**BF16, quantization="fp8-static"), 8, 0),
        ("03743aa8ad512262", "1ac209cb188074de"),
    ),
    (Candidate(TorchSettings(**BF16), 8, 0), ("faaf56fef4eac6f3", "a499b0023ea352b4")),
    (Candidate(ContinuousBatchingSettings(), 8, 0), ("b848ca117e251696", "e16e14ee0ba0e1cb")),
    # another backend's int8-dynamic is not torchao's
    (Candidate(OrtOnnxSettings(quantization="int8-dynamic"), 8, 0), ("c0be5e7a9798c703", "5add87e531a39984")),
]


def _ids(pairs: list[tuple[Candidate, tuple[str, str]]]) -> list[str]:
    return [c.label() for c, _ in pairs]


@pytest.mark.parametrize(("candidate", "before"), TORCHAO, ids=_ids(TORCHAO))
def test_torchao_candidates_are_measured_again(candidate: Candidate, before: tuple[str, str]) -> None:
    key, numerics = before
    assert candidate.key() != key
    assert candidate.numerics_key() != numerics  # their quality probe too
    # keyed only, never written: stored dicts and recipes read back the same candidate
    assert Candidate.from_dict(candidate.to_dict()) == candidate
    assert "torchao" not in str(candidate.to_dict())


@pytest.mark.parametrize(("candidate", "before"), UNCHANGED, ids=_ids(UNCHANGED))
def test_other_candidates_keep_their_keys(candidate: Candidate, before: tuple[str, str]) -> None:
    assert (candidate.key(), candidate.numerics_key()) == before
