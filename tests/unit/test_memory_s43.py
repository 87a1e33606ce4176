"""Memory footprints in the prefilter: the ONNX decode loops hold past and present KV together; each
backend says which row lengths its engines take; a torch build that casts its checkpoint on the
host of a GPU target is checked against that host's memory."""

from __future__ import annotations

import pytest

from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.ort_onnx.spec import OrtOnnxSpec
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.backends.tensorrt.spec import TensorRTSpec
from optimizer.backends.torch.settings import TorchSettings
from optimizer.config import WorkloadConfig, compose_run_config
from optimizer.model import ModelShape
from optimizer.search import prefilter
from optimizer.search.plan import _within_row_limits
from optimizer.space import Candidate
from optimizer.target import GIB
from unit.factories import target_spec, torch_candidate

# Llama-3-8B, shipped in bf16
LLAMA3_8B = ModelShape(
    32, 4096, 32, 8, 128, 128256, 8_030_261_248, tied_embeddings=False, checkpoint_precision="bf16"
)
WORKLOAD = WorkloadConfig(prompt_tokens=1024, max_new_tokens=1024)
GPUS = target_spec(kind="cuda", device_count=8)


@pytest.mark.parametrize("settings", [OrtOnnxSettings("cuda", "fp16"), TensorRTSettings("fp16")])
def test_the_onnx_decode_loops_count_past_and_present_kv(settings: object) -> None:
    """OrtSteps and TensorRTSteps bind the held past as input and allocate the present as output:
    at the last step both are alive, two fp32 KVs of the batch, not one."""
    candidate = Candidate(settings, 8, 0)  # type: ignore[arg-type]
    long = prefilter.estimate_memory_bytes(candidate, LLAMA3_8B, WORKLOAD, 2048)
    short = prefilter.estimate_memory_bytes(candidate, LLAMA3_8B, WORKLOAD, 1024)
    batch_kv_per_1024 = LLAMA3_8B.kv_bytes_per_token(4.0) * 8 * 1024
    assert long - short == pytest.approx(2 * batch_kv_per_1024, abs=1)


def test_each_tensorrt_spec_says_which_rows_it_takes() -> None:
    assert TensorRTSpec().row_reason(TensorRTSettings("fp16"), 1024) is None
    assert "at most 1024 tokens" in str(TensorRTSpec().row_reason(TensorRTSettings("fp16"), 1025))
    ort = OrtOnnxSpec()
    assert "at most 1024 tokens" in str(ort.row_reason(OrtOnnxSettings("tensorrt", "fp16"), 1025))
    assert ort.row_reason(OrtOnnxSettings("cuda", "fp16"), 100_000) is None  # no profile there


def test_the_plan_asks_the_backends_for_their_row_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose engines took longer rows would keep its candidates: the plan has no list of
    its own of which backends are bounded."""
    native = Candidate(TensorRTSettings("fp16"), 4, 0)
    cfg = compose_run_config(["workload=batch"])
    assert _within_row_limits([native], 2048, cfg)[0] == []
    monkeypatch.setattr(TensorRTSpec, "row_reason", lambda self, settings, tokens: None)
    assert _within_row_limits([native], 2048, cfg) == ([native], [])


def test_replicas_casting_the_checkpoint_on_a_small_host_are_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_pretrained casts a bf16 checkpoint to fp32 whole in host memory before .to(device), and
    the replicas load at once: 4 x 30 GiB on a 64 GiB host, though each H100 holds its copy."""
    monkeypatch.setattr(prefilter, "host_memory_bytes", lambda: 64 * GIB)
    four = Candidate(TorchSettings(precision="fp32"), 8, 0, replicas=4)
    reason = str(prefilter.memory_fit_reason(four, LLAMA3_8B, GPUS, WORKLOAD))
    assert "~119.7 GiB (4 replicas loading at once) > 57.6 GiB usable of this machine's memory" in reason
    assert "save the checkpoint in fp32" in reason and "fewer space.replicas" in reason


def test_what_the_host_maps_or_does_not_know_is_not_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefilter, "host_memory_bytes", lambda: 64 * GIB)
    fits = prefilter.memory_fit_reason
    # one replica's 30 GiB fits the host; bf16 from a bf16 checkpoint is mapped, not copied
    assert fits(torch_candidate(8, 0, precision="fp32"), LLAMA3_8B, GPUS, WORKLOAD) is None
    bf16 = Candidate(TorchSettings(precision="bf16"), 8, 0, replicas=4)
    assert fits(bf16, LLAMA3_8B, GPUS, WORKLOAD) is None
    four = Candidate(TorchSettings(precision="fp32"), 8, 0, replicas=4)
    unknown = ModelShape(32, 4096, 32, 8, 128, 128256, 8_030_261_248, tied_embeddings=False)
    assert fits(four, unknown, GPUS, WORKLOAD) is None  # the checkpoint's dtype unknown: no verdict
    monkeypatch.setattr(prefilter, "host_memory_bytes", lambda: None)
    assert fits(four, LLAMA3_8B, GPUS, WORKLOAD) is None  # the host's memory unknown
