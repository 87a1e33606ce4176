"""Analytic checks before building anything: does the candidate fit the target's memory?

Each backend's spec gives the bytes per weight, activation and KV element of its builds. A
layout divides them: a tensor-parallel rank holds 1/degree of the sharded weights and of the KV
heads; a replica holds all the weights and the KV of its share of the batch. On a GPU every
process has a device of its own, so the budget is per device; on a CPU the processes share the
host's memory, so the budget is for all of them together. A process needs the more of what it
holds running and of its load peak: a backend that quantizes after loading (torch, torch-cb)
first holds every weight unquantized. On a GPU target a torch build's host holds the weights too
while it loads (`host_load_bytes`), checked against this machine's memory.

The second check, a roofline bound of tokens/J against the best measured so far, is in roofline.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

from optimizer.backends.base import PRECISION_BYTES, Footprint, shape_footprint
from optimizer.backends.registry import spec_for
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.space import Candidate, exclusion_reason
from optimizer.target import GIB, TargetSpec, host_memory_bytes, physical_memory_bytes

RUNTIME_OVERHEAD_BYTES = GIB // 2  # allocator slack, CUDA context, framework buffers
USABLE_FRACTION = 0.9
# backends that build with torch's load_hf_model: from_pretrained on the host, then .to(device)
HOST_LOADERS = ("torch", "torch-cb")


def estimate_memory_bytes(
    candidate: Candidate, shape: ModelShape, workload: WorkloadConfig, longest: int | None = None
) -> int:
    """Peak bytes one of the candidate's processes holds running (on its device): weights + KV
    cache + activations + overhead; its build's own peak is `load_peak_bytes`. One process holds
    everything; see the module's note for layouts.
    `longest`: the longest request of the stream measured (a trace's own; what a serving engine
    reserves), else the longest the workload's fields allow."""
    fp = shape_footprint(spec_for(candidate.settings), candidate.settings, shape)
    degree = candidate.tensor_parallel
    batch, prompt = math.ceil(candidate.batch_size / candidate.replicas), workload.prompt_tokens
    weights = weights_bytes(fp, shape, degree)
    # every sequence of the batch at the workload's longest request (a stream's, not the offline
    # fields') in the cells the backend allocates for it, or the candidate's fixed cache, which
    # must still hold one such request
    longest = workload.longest_request_tokens() if longest is None else longest
    sequence = math.ceil(longest / fp.kv_token_granule) * fp.kv_token_granule
    tokens = max(fp.kv_cache_tokens, sequence) if fp.kv_cache_tokens else batch * sequence
    # a quantized cache's residual window: each sequence's newest tokens at the activation width
    full = min(tokens, batch * min(fp.kv_full_tokens, sequence))
    per_token = shape.kv_bytes_per_token(fp.kv_bytes) * (tokens - full)
    per_token += shape.kv_bytes_per_token(fp.activation_bytes) * full
    kv = per_token * fp.kv_on_device_fraction * fp.kv_copies / degree
    # Prefill activations (a few hidden-size buffers per token) and the float32 logits.
    prefill = batch * prompt * shape.hidden_size * fp.activation_bytes * 8
    logits = batch * (prompt if fp.prompt_logits else 1) * shape.vocab_size * 4
    return int(weights + kv + prefill + logits + RUNTIME_OVERHEAD_BYTES)


def load_peak_bytes(candidate: Candidate, shape: ModelShape) -> int:
    """Peak bytes of one of the candidate's processes while it builds: for a backend that quantizes
    after loading, every weight at `load_weight_bytes` (no KV cache yet); else the held weights."""
    fp = shape_footprint(spec_for(candidate.settings), candidate.settings, shape)
    if fp.load_weight_bytes is not None:
        width = fp.load_weight_bytes
        fp = replace(fp, weight_bytes=width, embedding_bytes=width, output_bytes=width)
    return int(weights_bytes(fp, shape, candidate.tensor_parallel) + RUNTIME_OVERHEAD_BYTES)


def memory_need_bytes(
    candidate: Candidate, shape: ModelShape, workload: WorkloadConfig, longest: int | None = None
) -> int:
    """What one process needs: the more of its running footprint and its load peak."""
    return max(estimate_memory_bytes(candidate, shape, workload, longest), load_peak_bytes(candidate, shape))


def weights_bytes(fp: Footprint, shape: ModelShape, degree: int) -> float:
    """Bytes of the weights one tensor-parallel rank holds at the footprint's widths."""
    # num_parameters counts an untied lm_head, a second vocab x hidden matrix, but not a tied one
    matrix = shape.vocab_size * shape.hidden_size
    own_head = 0 if shape.tied_embeddings else matrix
    layers = (shape.num_parameters - matrix - own_head) / degree * fp.weight_bytes
    return vocab_matrices_bytes(fp, shape, degree) + layers


def vocab_matrices_bytes(fp: Footprint, shape: ModelShape, degree: int) -> float:
    """Bytes of the embedding and lm_head as a build holds them on one rank: the embedding
    replicated and an lm_head of its own sharded (tp_plan "colwise_gather_output"), each at the
    precision its scheme keeps; a tied pair as `fp.tied_holds` says."""
    matrix = shape.vocab_size * shape.hidden_size
    embedding = fp.weight_bytes if fp.embedding_bytes is None else fp.embedding_bytes
    head = fp.weight_bytes if fp.output_bytes is None else fp.output_bytes
    held = fp.tied_holds if shape.tied_embeddings else "both"
    if held == "embedding":
        return matrix * embedding
    if held == "lm_head":
        return matrix * head
    return matrix * embedding + matrix / degree * head


def memory_fit_reason(
    candidate: Candidate,
    shape: ModelShape,
    target: TargetSpec,
    workload: WorkloadConfig,
    longest: int | None = None,
) -> str | None:
    """Why the candidate cannot fit the target's memory budget (or, on a GPU target, its host's
    memory while it loads), or None when it fits. The reason says when a larger tensor-parallel
    degree would fit the same batch."""
    running = estimate_memory_bytes(candidate, shape, workload, longest)
    load = load_peak_bytes(candidate, shape)
    shared = not target.is_cuda  # CPU processes share one memory (and may all load at once)
    need = max(running, load) * (candidate.processes if shared else 1)
    budget = target.memory_bytes * USABLE_FRACTION
    if need <= budget:
        return host_load_reason(candidate, shape) if target.is_cuda else None
    where = "of the memory budget" if shared else "per device of the memory budget"
    # said apart: a smaller batch or KV cache does not lower a load peak
    when = ""
    if load > running:
        held = running * (candidate.processes if shared else 1)
        when = f" while loading (all weights unquantized before it quantizes them; ~{held / GIB:.1f} GiB running)"
    reason = f"needs ~{need / GIB:.1f} GiB{when} > {budget / GIB:.1f} GiB usable {where} (target.memory_gib)"
    unlock = unlocking_degree(candidate, shape, target, workload, longest)
    if unlock is not None:
        reason += f"; tensor_parallel={unlock} would fit it"
    return reason


def host_load_bytes(candidate: Candidate, shape: ModelShape) -> int:
    """Host bytes a GPU candidate's torch build holds at once while loading: from_pretrained maps
    a checkpoint of the load precision (its weights are views of the safetensors file: page cache,
    shared and reclaimable) but casts one of another precision into host memory whole, before
    .to(device). Every replica loads at once (torch_parallel spawns them together). 0 where
    nothing is cast, or for tensor-parallel ranks (each loads its shard by the tp_plan)."""
    if candidate.backend not in HOST_LOADERS or candidate.tensor_parallel > 1:
        return 0
    precision = getattr(candidate.settings, "precision", None)
    if precision is None or shape.checkpoint_precision in (None, precision):
        return 0
    return int(shape.num_parameters * PRECISION_BYTES[precision]) * candidate.replicas


def host_load_reason(candidate: Candidate, shape: ModelShape) -> str | None:
    """Why this machine's memory cannot hold what a GPU candidate's build casts on the host, or None."""
    need = host_load_bytes(candidate, shape)
    memory = host_memory_bytes() if need else None
    if memory is None or need <= memory * USABLE_FRACTION:
        return None
    precision = getattr(candidate.settings, "precision", "")
    copies = f"{candidate.replicas} replicas loading at once" if candidate.replicas > 1 else "while loading"
    fix = f"save the checkpoint in {precision} (from_pretrained then maps it, casting nothing)"
    if candidate.replicas > 1:
        fix += " or use fewer space.replicas"
    return (
        f"casts the {shape.checkpoint_precision} checkpoint to {precision} in host memory before moving "
        f"it to the GPU: ~{need / GIB:.1f} GiB ({copies}) > {memory * USABLE_FRACTION / GIB:.1f} GiB "
        f"usable of this machine's memory; {fix}"
    )


def unlocking_degree(
    candidate: Candidate,
    shape: ModelShape,
    target: TargetSpec,
    workload: WorkloadConfig,
    longest: int | None = None,
) -> int | None:
    """The smallest tensor-parallel degree above the candidate's that fits this batch in the
    per-device budget (GPU targets: each rank has its own device) and that the rules let this
    candidate shard to, or None."""
    if not target.is_cuda:
        return None  # on one host memory, sharding saves no bytes
    free = target.device_count - (target.gpu.index if target.gpu else 0)
    for degree in range(candidate.tensor_parallel + 1, free // candidate.replicas + 1):
        sharded = replace(candidate, tensor_parallel=degree)
        # a degree the rules exclude (quantized, compiled, loop=slots, not torch, heads it does not
        # divide) is no way out: the hint would lead to an excluded candidate
        if exclusion_reason(sharded, target, workload.serving, shape) is not None:
            continue
        if memory_need_bytes(sharded, shape, workload, longest) <= target.memory_bytes * USABLE_FRACTION:
            return degree
    return None


def reference_fit_reason(
    reference: Candidate, shape: ModelShape, target: TargetSpec, workload: WorkloadConfig
) -> str | None:
    """Why the quality reference cannot fit the target's device, or None when it fits. Against the
    device's memory, not the candidates' budget: the reference is measured with, never deployed."""
    need = memory_need_bytes(reference, shape, workload)
    usable = physical_memory_bytes(target) * USABLE_FRACTION
    if need <= usable:
        return None
    where = "GPU memory" if target.is_cuda else "memory"
    return f"needs ~{need / GIB:.1f} GiB > {usable / GIB:.1f} GiB usable of this machine's {where}"
