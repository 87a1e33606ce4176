"""Analytic checks before building anything: does the candidate fit the target's memory?

Each backend's spec gives the bytes per weight, activation and KV element of its builds.

The second check, a roofline bound of tokens/J against the best measured so far, is in roofline.py.
"""

from __future__ import annotations

from optimizer.backends.registry import spec_for
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.space import Candidate
from optimizer.target import GIB, TargetSpec

RUNTIME_OVERHEAD_BYTES = GIB // 2  # allocator slack, CUDA context, framework buffers
USABLE_FRACTION = 0.9


def estimate_memory_bytes(candidate: Candidate, shape: ModelShape, workload: WorkloadConfig) -> int:
    """Peak bytes on the target device: weights + KV cache + activations + overhead."""
    fp = spec_for(candidate.settings).footprint(candidate.settings, shape.num_layers)
    batch, prompt = candidate.batch_size, workload.prompt_tokens
    weights = shape.num_parameters * fp.weight_bytes
    tokens = batch * (prompt + workload.max_new_tokens)
    kv = tokens * shape.kv_bytes_per_token(fp.kv_bytes) * fp.kv_on_device_fraction
    # Prefill activations (a few hidden-size buffers per token) and the float32 logits.
    prefill = batch * prompt * shape.hidden_size * fp.activation_bytes * 8
    logits = batch * (prompt if fp.prompt_logits else 1) * shape.vocab_size * 4
    return int(weights + kv + prefill + logits + RUNTIME_OVERHEAD_BYTES)


def memory_fit_reason(
    candidate: Candidate, shape: ModelShape, target: TargetSpec, workload: WorkloadConfig
) -> str | None:
    """Why the candidate cannot fit the target's memory budget, or None when it fits."""
    need = estimate_memory_bytes(candidate, shape, workload)
    budget = target.memory_bytes * USABLE_FRACTION
    if need > budget:
        return f"needs ~{need / GIB:.1f} GiB > {budget / GIB:.1f} GiB usable of the memory budget (target.memory_gib)"
    return None
