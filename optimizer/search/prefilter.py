"""Analytic checks before building anything: does the candidate fit the target's memory?

The second check, a roofline bound of tokens/J against the best measured so far, is in roofline.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.onnx_settings import OrtGenaiSettings, OrtOnnxSettings, TensorRTSettings
from optimizer.space import BackendSettings, Candidate, TorchSettings
from optimizer.target import GIB, TargetSpec

PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
WEIGHT_BYTES = {"int8-dynamic": 1.0, "int8-weight": 1.0, "int4-weight": 0.5, "fp8": 1.0, "fp8-static": 1.0}
RUNTIME_OVERHEAD_BYTES = GIB // 2  # allocator slack, CUDA context, framework buffers
USABLE_FRACTION = 0.9


@dataclass(frozen=True)
class Footprint:
    """Bytes per element of what a backend keeps in memory for one candidate."""

    weight_bytes: float  # per parameter
    activation_bytes: float
    kv_bytes: float  # per cached K or V element
    prompt_logits: bool = False  # prefill returns logits for every prompt token, not only the last
    kv_on_device_fraction: float = 1.0


def footprint(settings: BackendSettings, num_layers: int) -> Footprint:
    if isinstance(settings, TorchSettings):
        act = PRECISION_BYTES[settings.precision]
        kv = kv_element_bytes(settings.kv_cache, act)
        # an offloaded cache keeps only the layers in flight on the device
        on_device = 2 / num_layers if settings.kv_cache.startswith("offloaded") else 1.0
        return Footprint(WEIGHT_BYTES.get(settings.quantization, act), act, kv, False, on_device)
    if isinstance(settings, OrtGenaiSettings):
        # the builder keeps fp32 activations and KV for int4/int8 on CPU, fp16 on CUDA
        act = 4.0 if settings.precision == "fp32" or settings.provider == "cpu" else 2.0
        if settings.precision in ("int4", "int8"):
            bits = 4 if settings.precision == "int4" and not settings.int8_lm_head else 8
            weight = bits / 8 + 4 / settings.block_size  # plus one fp32 scale per block
        else:
            weight = PRECISION_BYTES[settings.precision]
        return Footprint(weight, act, act, prompt_logits=True)
    if isinstance(settings, OrtOnnxSettings):
        act = PRECISION_BYTES[settings.precision] if settings.provider == "cuda" else 4.0
        weight = 1.0 if settings.quantization != "none" else act
        return Footprint(weight, act, act)
    assert isinstance(settings, TensorRTSettings)
    # the engine's inputs and outputs (KV cache included) stay fp32; fp16/int8 are inside it
    return Footprint({"fp32": 4.0, "fp16": 2.0, "int8": 1.0}[settings.precision], 4.0, 4.0)


def estimate_memory_bytes(candidate: Candidate, shape: ModelShape, workload: WorkloadConfig) -> int:
    """Peak bytes on the target device: weights + KV cache + activations + overhead."""
    fp = footprint(candidate.settings, shape.num_layers)
    batch, prompt = candidate.batch_size, workload.prompt_tokens
    weights = shape.num_parameters * fp.weight_bytes
    tokens = batch * (prompt + workload.max_new_tokens)
    kv = tokens * shape.kv_bytes_per_token(fp.kv_bytes) * fp.kv_on_device_fraction
    # Prefill activations (a few hidden-size buffers per token) and the float32 logits.
    prefill = batch * prompt * shape.hidden_size * fp.activation_bytes * 8
    logits = batch * (prompt if fp.prompt_logits else 1) * shape.vocab_size * 4
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
