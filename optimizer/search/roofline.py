"""An analytic upper bound of a candidate's tokens per joule, before anything is built.

A batch of B requests (P prompt tokens, G new tokens) must at least move the weights and KV cache
through memory and do the matmul FLOPs; it can go no faster than the device's peak bandwidth and
peak FLOP/s allow, and the device draws at least its idle power meanwhile:

    tokens/J <= B * G / (floor watts * max(bytes / bandwidth, FLOPs / peak FLOP/s))

Every term is chosen so that the bound stays an *upper* bound: weights and FLOPs leave out one
vocabulary matrix (an embedding table is gathered, not read whole), weights that fit in cache move
no DRAM bytes, reduced-precision matmuls get the fastest ratio any kernel of the kind reaches, and
measured rates and the idle floor get `search.roofline_headroom` of slack.

On a request stream the batch size only caps how many requests run at once, so the bound there is
per step (`_stream_bound`). On a GPU, each process of a replicas x tensor-parallel layout is
bounded on a device of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optimizer.backends.base import shape_moved_bytes
from optimizer.backends.registry import spec_for
from optimizer.config import SloConfig, WorkloadConfig
from optimizer.model import ModelShape
from optimizer.results import CandidateResult
from optimizer.space import Candidate
from optimizer.target import GIB, TargetSpec

log = logging.getLogger(__name__)

# Peak matmul rate relative to the rate the rates are given for (bf16 on GPUs, measured fp32 on
# CPUs). Generous on purpose: int8/fp8 tensor cores run 2x bf16; CPU AMX tiles run bf16 16x and
# int8 32x the fp32 FMA rate. A ratio that is too high only loosens the bound.
GPU_SPEEDUP = {"int8": 2.0, "fp8": 2.0}
CPU_SPEEDUP = {"reduced": 16.0, "int8": 32.0, "fp8": 32.0}  # reduced: bf16 / fp16 activations
# Weights smaller than this may stay in a GPU's L2 between steps (H200: 60 MB, B200: 126 MB).
GPU_CACHE_BYTES = 128 << 20
UNMEASURED_FLOOR_WATTS = 1e-9  # the floor when idle power reads 0 W (workload.idle_seconds 0)


@dataclass(frozen=True)
class RooflineRates:
    """Upper bounds of the device's rates and a lower bound of its power while it runs."""

    bytes_per_second: float
    flops_per_second: float
    floor_watts: float
    cache_bytes: int
    source: str  # where the numbers come from, printed in the report

    def describe(self) -> str:
        return (
            f"{self.bytes_per_second / 1e9:.0f} GB/s, {self.flops_per_second / 1e12:.2f} TFLOP/s, "
            f">= {self.floor_watts:.1f} W ({self.source})"
        )


@dataclass(frozen=True)
class RooflineBound:
    """For one candidate: the most tokens/J it can reach and the least time its steps take."""

    tokens_per_joule: float
    prefill_seconds: float  # a lower bound of TTFT
    step_seconds: float  # a lower bound of TPOT (the first decode step, shortest context)


def rates_for(target: TargetSpec, idle_watts: float, headroom: float) -> RooflineRates | None:
    """The target's preset rates, or on a CPU without them, rates measured here times `headroom`.
    None when a GPU target has no preset (no bound rather than a wrong one)."""
    floor = idle_watts / headroom  # idle read with other load on the machine may sit high
    if target.memory_bandwidth_gb_per_s and target.peak_bf16_tflops:
        cache = GPU_CACHE_BYTES if target.is_cuda else int(_llc_bytes() * headroom)
        return RooflineRates(
            bytes_per_second=target.memory_bandwidth_gb_per_s * 1e9,
            flops_per_second=target.peak_bf16_tflops * 1e12,
            floor_watts=floor,
            cache_bytes=cache,
            source=f"target preset '{target.name}'",
        )
    if target.is_cuda:
        log.warning(
            "no roofline for %s: set target.memory_bandwidth_gb_per_s and peak_bf16_tflops", target.name
        )
        return None
    bandwidth, flops = measure_cpu_rates(target.cores)
    peak = cpu_peak_flops(target.cores)
    return RooflineRates(
        bytes_per_second=bandwidth * headroom,
        # a 1024-square matmul reached half of what a batch-16 prefill did on this EPYC: the
        # vector units' peak bounds both
        flops_per_second=max(flops * headroom, peak),
        floor_watts=floor,
        cache_bytes=int(_llc_bytes() * headroom),
        source=(
            f"ASSUMPTION: copy bandwidth {bandwidth / 1e9:.1f} GB/s measured on this CPU x{headroom:g} headroom; "
            f"fp32 matmul the larger of {flops / 1e9:.0f} GFLOP/s measured x{headroom:g} and the vector "
            f"peak {peak / 1e9:.0f} GFLOP/s; floor = idle / {headroom:g}"
        ),
    )


def cpu_peak_flops(cores: int, cpuinfo: str | None = None) -> float:
    """fp32 FLOP/s the vector units allow at most: two FMA units of the widest vectors per core
    (AVX-512: 16 lanes, AVX2: 8, else 4) x 2 FLOPs x the highest clock listed. Where a core runs
    AVX-512 on 256-bit halves (Zen 4) or boosts past the listed clock, the two roughly cancel;
    0.0 when /proc/cpuinfo is unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return 0.0
    flags: set[str] = set()
    mhz = 0.0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags |= set(value.split())
        elif key.strip() == "cpu MHz":
            mhz = max(mhz, float(value or 0))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return cores * 2 * lanes * 2 * mhz * 1e6


def measure_cpu_rates(threads: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` copy bandwidth (bytes/s) and fp32 matmul rate (FLOP/s) on this CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        src = torch.ones(1 << 26)  # 256 MiB: far past any last-level cache
        dst = torch.empty_like(src)
        copy_seconds = _best_seconds(lambda: dst.copy_(src), repeats)
        a = torch.randn(1024, 1024)
        matmul_seconds = _best_seconds(lambda: torch.mm(a, a), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * src.numel() * 4 / copy_seconds, 2 * 1024**3 / matmul_seconds


def _best_seconds(work: object, repeats: int) -> float:
    assert callable(work)
    work()  # first touch / warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def _llc_bytes(cpus: Path = Path("/sys/devices/system/cpu")) -> int:
    """All last-level cache on the machine, from sysfs: the sum over every distinct instance of the
    highest cache level (an EPYC has one L3 per core complex; cpu0's alone understates the cache
    a many-core candidate runs in). 8 MiB when unreadable."""
    instances: dict[tuple[int, str], int] = {}
    for entry in cpus.glob("cpu[0-9]*/cache/index*"):
        try:
            level = int((entry / "level").read_text())
            shared = (entry / "shared_cpu_list").read_text().strip()
            size = _cache_size((entry / "size").read_text())
        except (OSError, ValueError):
            continue
        instances[(level, shared)] = size
    if not instances:
        return 8 << 20
    top = max(level for level, _ in instances)
    return sum(size for (level, _), size in instances.items() if level == top)


def _cache_size(text: str) -> int:
    text = text.strip().upper()
    multiplier = {"K": 1 << 10, "M": 1 << 20, "G": GIB}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * multiplier


@dataclass(frozen=True)
class Roofline:
    """The bound for every candidate of one search: model shape, workload and device rates."""

    shape: ModelShape
    workload: WorkloadConfig
    rates: RooflineRates
    cuda: bool

    def bound(self, candidate: Candidate) -> RooflineBound:
        return roofline_bound(candidate, self.shape, self.workload, self.rates, self.cuda)

    def prune_reason(self, candidate: Candidate, best: CandidateResult | None) -> str | None:
        return prune_reason(self.bound(candidate), best, self.workload.slo)


def roofline_bound(
    candidate: Candidate, shape: ModelShape, workload: WorkloadConfig, rates: RooflineRates, cuda: bool
) -> RooflineBound:
    """The bound of one batch (or, on a GPU layout, of one replica's share of it, on devices of its
    own); on a request stream, see `_stream_bound`."""
    settings = candidate.settings
    spec = spec_for(settings)
    fp = shape_moved_bytes(spec, settings, shape)
    # on a GPU each process has a device of its own: a rank moves and multiplies 1/tensor_parallel
    # of the layers' weights, a replica serves its share of the batch (on a CPU, the processes
    # share the cores and the memory bus that the rates describe)
    ranks, replicas = (candidate.tensor_parallel, candidate.replicas) if cuda else (1, 1)
    batch, prompt, new = -(-candidate.batch_size // replicas), workload.prompt_tokens, workload.max_new_tokens
    # one vocabulary x hidden matrix is left out: the embedding lookup gathers rows
    body = max(shape.num_parameters - shape.vocab_size * shape.hidden_size, 0) / ranks
    weight_bytes = body * fp.weight_bytes
    weight_bytes = 0.0 if weight_bytes <= rates.cache_bytes else weight_bytes
    kv_token_bytes = shape.kv_bytes_per_token(fp.kv_bytes) / ranks
    if fp.kv_on_device_fraction < 1:
        kv_token_bytes = 0.0  # read from host memory over a link we have no rate for
    attention_width = shape.num_layers * shape.num_attention_heads * shape.head_dim / ranks
    speedup = (GPU_SPEEDUP if cuda else CPU_SPEEDUP).get(spec.matmul_kind(settings), 1.0)
    flops_rate = rates.flops_per_second * speedup

    def seconds(bytes_moved: float, flops: float) -> float:
        return max(bytes_moved / rates.bytes_per_second, flops / flops_rate)

    if workload.serving:
        return _stream_bound(batch, ranks, weight_bytes, body, rates, seconds)
    prefill = seconds(weight_bytes, 2 * body * batch * prompt)
    first_step = seconds(
        weight_bytes + batch * prompt * kv_token_bytes,
        2 * body * batch + 4 * attention_width * prompt * batch,
    )
    # the prefill yields the first token: new - 1 decode steps, over contexts prompt + 1 ..
    # prompt + new - 1 (charging `new` steps made the bound lower than the work, which may prune)
    steps = max(new - 1, 0)
    context_sum = steps * prompt + steps * (steps + 1) / 2
    decode = seconds(
        steps * weight_bytes + batch * context_sum * kv_token_bytes,
        2 * body * batch * steps + 4 * attention_width * context_sum * batch,
    )
    tokens_per_joule = _per_joule(batch * new, prefill + decode, rates.floor_watts * ranks)
    return RooflineBound(tokens_per_joule=tokens_per_joule, prefill_seconds=prefill, step_seconds=first_step)


def _per_joule(tokens: float, seconds: float, floor_watts: float) -> float:
    """Tokens per joule at no less than `floor_watts` (every rank of a process draws the floor; a
    replica's tokens and devices cancel out). Without a floor (idle not measured: 0 W, or NaN) an
    infinite bound left `bound` a random order: a stand-in far below any device's draw keeps the
    order any real floor gives and still prunes nothing a measurement reaches."""
    floor = floor_watts if floor_watts > 0 else UNMEASURED_FLOOR_WATTS
    return tokens / (floor * max(seconds, 1e-12))


def _stream_bound(
    batch: int,
    ranks: int,
    weight_bytes: float,
    body: float,
    rates: RooflineRates,
    seconds: Callable[[float, float], float],
) -> RooflineBound:
    """On a request stream the batch size is only the most requests an engine runs at once: at a
    low load a request is prefilled and decoded alone, its prompt may be short or mostly cached,
    and the stream's lengths are not the offline fields. What still bounds it: a first token
    needs one pass over the weights, a decode step at least that, and no step yields more than
    `batch` tokens (prefills and KV reads only add time)."""
    one_pass = seconds(weight_bytes, 2 * body)
    tokens_per_joule = _per_joule(batch, seconds(weight_bytes, 2 * body * batch), rates.floor_watts * ranks)
    return RooflineBound(tokens_per_joule=tokens_per_joule, prefill_seconds=one_pass, step_seconds=one_pass)


def prune_reason(bound: RooflineBound, best: CandidateResult | None, slo: SloConfig) -> str | None:
    """Why this candidate need not be measured: its bound cannot meet the SLO, or cannot beat the
    best feasible candidate measured so far. None when it might."""
    if slo.tpot_ms is not None and bound.step_seconds * 1000 > slo.tpot_ms:
        return (
            f"roofline: a decode step takes >= {_ms(bound.step_seconds)} ms > workload.slo.tpot_ms "
            f"{slo.tpot_ms:g}"
        )
    if slo.ttft_ms is not None and bound.prefill_seconds * 1000 > slo.ttft_ms:
        return (
            f"roofline: the prefill takes >= {_ms(bound.prefill_seconds)} ms > workload.slo.ttft_ms "
            f"{slo.ttft_ms:g}"
        )
    if best is not None and bound.tokens_per_joule < best.objective:
        return (
            f"roofline: <= {bound.tokens_per_joule:.3g} tok/J < {best.objective:.3g} measured for "
            f"{best.candidate.label()}"
        )
    return None


def _ms(seconds: float) -> str:
    """Milliseconds, with the digits a sub-millisecond bound needs (an SLO of 0.001 ms is legal)."""
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.2g}"
