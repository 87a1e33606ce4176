"""What the search knows of the PyTorch backend: its settings grid, validity rules, memory
footprint and matmul arithmetic. Imports no torch: `build` loads the backend."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import PRECISION_BYTES, Engine, Footprint, MovedBytes, precision_kind
from optimizer.backends.prefixes import OFFLINE_REASON
from optimizer.backends.torch.settings import INT4_GROUP_SIZE, TorchSettings

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.model_files import ModelShape
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

GPU_QUANTIZATIONS = ("int4-weight", "fp8", "fp8-static")
TORCHAO_QUANTIZATIONS = ("int8-dynamic", "int8-weight", "int4-weight", "fp8")  # fp8-static is ours
# int4: torchao's groups of 128 weights carry a bf16 scale and a bf16 zero point (4 bytes per
# 128 weights, +6% that the memory fit left out); the per-row scales of the int8/fp8 ones are noise
INT4_GROUP_BYTES = 4 / INT4_GROUP_SIZE
WEIGHT_BYTES = {
    "int8-dynamic": 1.0,
    "int8-weight": 1.0,
    "int4-weight": 0.5 + INT4_GROUP_BYTES,
    "fp8": 1.0,
    "fp8-static": 1.0,
}
# transformers' QuantizedLayer defaults (generate's cache_config, as TorchEngine passes it, sets
# neither): its newest tokens stay unquantized, and each group of elements has a scale and a zero
# point; a test holds them to the installed transformers' signature
QUANTIZED_RESIDUAL_TOKENS = 128
QUANTIZED_GROUP_SIZE = 64


class TorchSpec:
    name = TorchSettings.BACKEND
    settings_type = TorchSettings

    def settings_for(self, space: SpaceConfig) -> Iterator[TorchSettings]:
        t = space.torch
        for values in itertools.product(
            t.precisions,
            t.quantizations,
            t.kv_caches,
            t.compile,
            t.attention,
            t.loops,
            t.step_intervals_ms,
            t.prefix_sharing,
            t.compile_layers,
        ):
            yield TorchSettings(*values)

    def exclusion_reason(self, settings: TorchSettings, target: TargetSpec) -> str | None:
        return torch_rule(settings, target)

    def workload_reason(self, settings: TorchSettings, batch_size: int, serving: bool) -> str | None:
        # HF generate pads a batch of mixed-length prompts; the captured loop does not
        if serving and settings.loop == "graph":
            return "the captured decode loop runs lockstep batches of equal prompts: offline workloads only"
        if settings.prefix_sharing and not serving:
            return OFFLINE_REASON
        return None

    def footprint(self, settings: TorchSettings, num_layers: int) -> Footprint:
        act = PRECISION_BYTES[settings.precision]
        kv = kv_element_bytes(settings.kv_cache, act)
        # a quantized cache holds its newest tokens unquantized until they fill a residual window
        quantized_kv = quantized_kv_bits(settings.kv_cache) is not None
        residual = QUANTIZED_RESIDUAL_TOKENS if quantized_kv else 0
        # an offloaded cache keeps only the layers in flight on the device (two: the one computing,
        # the next prefetched), at most the whole cache for a one-layer model
        on_device = min(2 / num_layers, 1.0) if settings.kv_cache.startswith("offloaded") else 1.0
        # quantization replaces Linear layers but the output projection (excluded_weights): the
        # embedding and an untied lm_head keep their precision
        kept = act if settings.quantization != "none" else None
        return Footprint(
            WEIGHT_BYTES.get(settings.quantization, act),
            act,
            kv,
            False,
            on_device,
            embedding_bytes=kept,
            output_bytes=kept,
            kv_copies=2 if settings.prefix_sharing else 1,  # the slot loop's prefix store
            kv_full_tokens=residual,
            # load_hf_model puts the whole model on the device before quantize_weights
            load_weight_bytes=kept,
        )

    def moved_bytes(self, settings: TorchSettings, num_layers: int) -> MovedBytes:
        """The footprint's weights (which count no scales or buffers) and a quantized cache's bits
        alone (not its group scales nor its residual window) bound what moves."""
        fp = self.footprint(settings, num_layers)
        bits = quantized_kv_bits(settings.kv_cache)
        kv = fp.kv_bytes if bits is None else bits / 8
        return MovedBytes(fp.weight_bytes, kv, fp.kv_on_device_fraction)

    def matmul_kind(self, settings: TorchSettings) -> str:
        """int8-dynamic and fp8 compute in int8 / fp8; weight-only int8/int4 in the activation dtype."""
        if settings.quantization in ("int8-dynamic", "fp8", "fp8-static"):
            return "int8" if settings.quantization == "int8-dynamic" else "fp8"
        return precision_kind(settings.precision)

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        if candidate.parallel:  # replicas or tensor-parallel ranks, each a process of its own
            from optimizer.backends.torch_parallel.engine import build_parallel_engine

            return build_parallel_engine(model, candidate, target, workdir)
        from optimizer.backends.torch.backend import TorchBackend  # torch and transformers load here

        return TorchBackend().build(model, candidate, target, workdir)


SPEC = TorchSpec()


def kv_element_bytes(kv_cache: str, act_bytes: float) -> float:
    """Bytes per cached K or V element: the activation dtype, or the quantized cache's bits plus
    the scale and zero point (at the activation dtype) of each group of q_group_size elements."""
    bits = quantized_kv_bits(kv_cache)
    if bits is None:
        return act_bytes
    return bits / 8 + 2 * act_bytes / QUANTIZED_GROUP_SIZE


def quantized_kv_bits(kv_cache: str) -> int | None:
    """The bits of a quanto-N / hqq-N cache, or None for an unquantized one."""
    backend, _, bits = kv_cache.partition("-")
    return int(bits) if backend in ("quanto", "hqq") and bits.isdigit() else None


def torch_rule(s: TorchSettings, target: TargetSpec) -> str | None:
    cuda = target.is_cuda
    if s.precision == "bf16" and not target.bf16:
        return "target has no native bf16"
    if s.precision == "fp16" and not target.fp16:
        return "fp16 has no fast kernels on this target"
    if s.quantization in GPU_QUANTIZATIONS and not cuda:
        return f"{s.quantization} kernels need a CUDA GPU"
    if s.quantization.startswith("fp8") and not target.fp8:
        return "fp8 needs compute capability >= 8.9"
    if s.quantization in GPU_QUANTIZATIONS and s.precision != "bf16":
        return f"{s.quantization} runs with bf16 activations"
    if s.quantization in TORCHAO_QUANTIZATIONS and importlib.util.find_spec("torchao") is None:
        return f"{s.quantization} needs torchao (pip install torchao)"
    if s.kv_cache.startswith("offloaded") and not cuda:
        return "offloading the KV cache to host memory needs a GPU target"
    kv_backend = s.kv_cache.split("-")[0]
    if kv_backend in ("quanto", "hqq"):
        module = "optimum.quanto" if kv_backend == "quanto" else "hqq"
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"a {kv_backend} KV cache needs {module}"
        if s.compile:
            return "quantized KV caches do not compile"
    if s.compile and s.kv_cache not in ("static", "offloaded_static"):
        return "torch.compile needs a static KV cache (fixed shapes)"
    if s.step_interval_ms and s.loop != "slots":
        return "step_interval_ms paces loop=slots only"
    if s.prefix_sharing and s.loop != "slots":
        return "prefix_sharing keeps prefixes for loop=slots only (backend torch-cb has its own)"
    if s.compile_layers and not (s.compile and s.loop in ("graph", "slots")):
        return "compile_layers compiles the layers of loop=graph or loop=slots: set compile=true there"
    if s.loop == "graph" and not cuda:
        return "the captured decode loop needs CUDA graphs (a GPU target)"
    if s.loop != "hf":
        if s.kv_cache != "static":
            return f"loop={s.loop} runs on a static KV cache (kv_cache: static)"
        if s.loop == "slots" and s.attention.startswith("flash"):
            return "loop=slots masks each slot's keys with a 4D mask: sdpa, sdpa_gqa or eager attention"
        if s.quantization == "int8-dynamic" and cuda:
            return "torchao int8-dynamic syncs the host inside its matmul: not capturable in a CUDA graph"
    if s.attention.startswith("flash") and s.precision == "fp32":
        # transformers only warns at load; its forward then hands flash-attn fp32, which it refuses
        return "flash attention kernels take fp16 or bf16, not fp32"
    if s.attention == "flash_attention_2" and (not cuda or importlib.util.find_spec("flash_attn") is None):
        return "flash_attention_2 needs a CUDA GPU with flash-attn installed"
    if s.attention == "flash_attention_3":
        # FlashAttention-3 is written for Hopper's TMA and warpgroup MMA: sm_90 only
        if target.gpu is None or target.gpu.compute_capability[0] != 9:
            return "flash_attention_3 needs a Hopper GPU (compute capability 9.x)"
        if importlib.util.find_spec("flash_attn_interface") is None:
            return "flash_attention_3 needs flash-attn 3 installed (its module flash_attn_interface)"
    return None


def int4_shape_reason(settings: object, shape: ModelShape | None) -> str | None:
    """Why a torch or torch-cb int4-weight candidate cannot quantize this model, or None: torchao
    groups a Linear's inputs by INT4_GROUP_SIZE and leaves a layer of another width 16-bit (the
    build refuses that, after loading the model); every attention and MLP input projection takes
    the hidden size."""
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

    if shape is None or not isinstance(settings, (TorchSettings, ContinuousBatchingSettings)):
        return None
    if settings.quantization != "int4-weight" or shape.hidden_size % INT4_GROUP_SIZE == 0:
        return None
    return (
        f"int4-weight quantizes inputs in groups of {INT4_GROUP_SIZE}, and the model's hidden size "
        f"{shape.hidden_size} is no multiple of it: torchao would leave its Linear layers 16-bit"
    )
