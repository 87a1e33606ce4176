"""Flash attention with fp32 weights: transformers only warns at load, and its forward hands
flash-attn fp32 tensors (get_target_dtype takes the Linear weights' dtype), which flash-attn
refuses. Such a candidate was valid on a GPU target and failed after its build."""

from __future__ import annotations

import pytest

from optimizer.backends.registry import spec_for
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch.spec import torch_rule
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings


@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_with_fp32_is_excluded(make_target, attention: str) -> None:
    gpu = make_target(kind="cuda")
    reason = torch_rule(TorchSettings(precision="fp32", attention=attention), gpu)
    assert reason == "flash attention kernels take fp16 or bf16, not fp32"


def test_torch_cb_flash_attention_with_fp32_is_excluded(make_target) -> None:
    settings = ContinuousBatchingSettings(precision="fp32", attention="flash_attention_2")
    reason = spec_for(settings).exclusion_reason(settings, make_target(kind="cuda"))
    assert reason is not None and "fp16 or bf16" in reason


def test_sdpa_with_fp32_is_unchanged(make_target) -> None:
    assert torch_rule(TorchSettings(precision="fp32", attention="sdpa"), make_target(kind="cuda")) is None
