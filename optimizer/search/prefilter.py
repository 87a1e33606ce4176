"""Analytic checks before building anything: does the candidate fit the target's memory?

The second check, a roofline bound of tokens/J against the best measured so far, is in roofline.py.
"""

from __future__ import annotations

from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.space import Candidate, TorchSettings
from optimizer.target import GIB, TargetSpec

PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
WEIGHT_BYTES = {"int8-dynamic": 1.0, "int8-weight": 1.0, "int4-weight": 0.5, "fp8": 1.0}
RUNTIME_OVERHEAD_BYTES = GIB // 2  # allocator slack, CUDA context, framework buffers
USABLE_FRACTION = 0.9


def estimate_memory_bytes(candidate: Candidate, shape: ModelShape, workload: WorkloadConfig) -> int:
    """Peak bytes on the target device: weights + KV cache + activations + overhead."""
    settings = candidate.settings
    assert isinstance(settings, TorchSettings)
    act_bytes = PRECISION_BYTES[settings.precision]
    weights = shape.num_parameters * WEIGHT_BYTES.get(settings.quantization, act_bytes)
    kv_element = kv_element_bytes(settings.kv_cache, act_bytes)
    tokens = candidate.batch_size * (workload.prompt_tokens + workload.max_new_tokens)
    kv = tokens * shape.kv_bytes_per_token(kv_element)
    if settings.kv_cache.startswith("offloaded"):
        kv = kv * 2 / shape.num_layers  # only the layers in flight stay on the device
    # Prefill activations (a few hidden-size buffers per token) and the last-token logits.
    prefill = candidate.batch_size * workload.prompt_tokens * shape.hidden_size * act_bytes * 8
    logits = candidate.batch_size * shape.vocab_size * 4
    return int(weights + kv + prefill + logits + RUNTIME_OVERHEAD_BYTES)


def kv_element_bytes(kv_cache: str, act_bytes: float) -> float:
    """Bytes per cached K or V element: the activation dtype, or the quantized cache's bits."""
    backend, _, bits = kv_cache.partition("-")
    if backend in ("quanto", "hqq") and bits.isdigit():
        return int(bits) / 8
    return act_bytes


def memory_fit_reason(
    candidate: Candidate, shape: ModelShape, target: TargetSpec, workload: WorkloadConfig
) -> str | None:
    """Why the candidate cannot fit the target's memory budget, or None when it fits."""
    need = estimate_memory_bytes(candidate, shape, workload)
    budget = target.memory_bytes * USABLE_FRACTION
    if need > budget:
        return f"needs ~{need / GIB:.1f} GiB > {budget / GIB:.1f} GiB usable of the memory budget (target.memory_gib)"
    return None
