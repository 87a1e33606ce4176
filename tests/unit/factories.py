"""Factories for the unit tests: targets, candidates and hand-made results, built directly (no
detection, no measuring). conftest.py wraps each in a fixture (make_target, make_candidate, ...);
modules that are not tests (a worker run in a child process) import them from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from optimizer.config import QualityConfig, WorkloadConfig
from optimizer.measure import PROTOCOL_VERSION
from optimizer.measure.latency import LatencySummary
from optimizer.measure.quality import QualityResult
from optimizer.measure.workload import PerformanceResult, Spread, WindowResult
from optimizer.model import ModelShape
from optimizer.recipe import RECIPE_SCHEMA
from optimizer.results import MEASURED, CandidateResult
from optimizer.space import Candidate, TorchSettings
from optimizer.target import GIB, GpuInfo, TargetSpec
from optimizer.version import tool_version

WEIGHT_SHA = "ab" * 32  # the weights a hand-made recipe names
# SmolLM2-135M, the packaged model: its config's shape and the parameter count its conversion gives
SMOLLM2_SHAPE = ModelShape(
    num_layers=30,
    hidden_size=576,
    num_attention_heads=9,
    num_kv_heads=3,
    head_dim=64,
    vocab_size=49152,
    num_parameters=134_515_008,
    context_length=8192,
    checkpoint_precision="fp32",  # its GGUF converts to an fp32 checkpoint
)


def target_spec(**overrides: Any) -> TargetSpec:
    """A 4-core bf16 CPU unless overridden; kind="cuda" starts from an 80 GB H100."""
    values: dict[str, Any] = {
        "kind": "cpu",
        "name": "cpu",
        "device": "cpu",
        "cpu_model": "Test CPU",
        "cores": 4,
        "memory_bytes": 16 * GIB,
        "bf16": True,
        "fp16": False,
        "fp8": False,
        "tdp_watts": None,
        "memory_bandwidth_gb_per_s": None,
        "peak_bf16_tflops": None,
        "energy_source": "auto",
        "cpu_active_watts_per_core": 5.0,
        "cpu_idle_watts_per_core": 1.5,
    }
    if overrides.get("kind") == "cuda":
        values |= {
            "name": "h100",
            "device": "cuda:0",
            "memory_bytes": 80 * GIB,
            "fp16": True,
            "fp8": True,
            "gpu": GpuInfo("NVIDIA H100 80GB HBM3", 0, 80 * GIB, "550.54", (9, 0), 700.0),
        }
    values |= overrides
    return TargetSpec(**values)


def torch_candidate(batch_size: int = 1, threads: int = 4, **settings: Any) -> Candidate:
    """A PyTorch candidate; `settings` are TorchSettings fields."""
    return Candidate(TorchSettings(**settings), batch_size=batch_size, threads=threads)


def quality_result(
    mean_kl: float = 0.0, ppl_increase: float = 0.0, top1_agreement: float = 1.0
) -> QualityResult:
    return QualityResult(
        perplexity=10.0 * (1 + ppl_increase),
        reference_perplexity=10.0,
        ppl_increase=ppl_increase,
        top1_agreement=top1_agreement,
        mean_kl=mean_kl,
        tokens=256,
        seconds=0.5,
    )


def performance_result(
    goodput_tokens_per_joule: float = 1.0,
    tokens_per_second: float = 10.0,
    slo_violations: Sequence[str] = (),
    source: str = "estimate",
) -> PerformanceResult:
    joules = 100.0
    window = WindowResult(
        source=source,
        joules=joules,
        active_joules=60.0,
        seconds=2.0,
        output_tokens=int(goodput_tokens_per_joule * joules) + 10,
        goodput_tokens=int(goodput_tokens_per_joule * joules),
        warnings=["a warning"],
    )
    gtpj = Spread(goodput_tokens_per_joule, 0.0, goodput_tokens_per_joule, goodput_tokens_per_joule)
    return PerformanceResult(
        source=source,
        idle_watts=20.0,
        windows=[window, window],
        tokens_per_joule=Spread(
            window.tokens_per_joule, 0.0, window.tokens_per_joule, window.tokens_per_joule
        ),
        goodput_tokens_per_joule=gtpj,
        active_tokens_per_joule=Spread(2.0, 0.1, 1.9, 2.1),
        tokens_per_second=Spread(tokens_per_second, 0.5, tokens_per_second - 1, tokens_per_second + 1),
        watts=Spread(50.0, 1.0, 49.0, 51.0),
        latency=LatencySummary.of([0.1, 0.2, 0.3], [0.01, 0.02, 0.03]),
        slo_violations=list(slo_violations),
        goodput_fraction=0.9,
    )


def candidate_result(
    candidate: Candidate | None = None,
    status: str = MEASURED,
    quality: QualityResult | None = None,
    performance: PerformanceResult | None = None,
    **fields: Any,
) -> CandidateResult:
    return CandidateResult(
        candidate=candidate or torch_candidate(),
        status=status,
        quality=quality,
        performance=performance,
        **fields,
    )


def recipe_data() -> dict[str, Any]:
    """A recipe in the layout build_recipe writes."""
    candidate = Candidate(
        TorchSettings(precision="bf16", quantization="int8-weight"), batch_size=8, threads=2
    )
    workload = WorkloadConfig(prompt_tokens=32, max_new_tokens=16, min_window_seconds=1.0, repeats=2)
    quality = QualityConfig(num_sequences=4, seq_tokens=64, max_kl=0.1)
    return {
        "schema": RECIPE_SCHEMA,
        "wattsmith_version": tool_version(),
        "created": "2026-01-01T00:00:00+00:00",
        "model": {
            "name": "tiny",
            "source": "/models/tiny",
            "format": "hf-dir",
            "weight_sha256": WEIGHT_SHA,
            "revision": None,
            "num_parameters": 1234,
        },
        "target": {"kind": "cpu", "name": "cpu", "cpu_model": "Test CPU", "cores": 2, "gpu": None},
        "settings": candidate.to_dict(),
        "constraints": {
            "quality": {"max_ppl_increase": 0.03, "min_top1_agreement": 0.95, "max_kl": 0.1},
            "slo": asdict(workload.slo),
        },
        "measurement": {
            "workload": asdict(workload),
            "quality": asdict(quality),
            "quality_text_sha256": "cd" * 32,
            "idle_watts": 3.0,
            "protocol_version": PROTOCOL_VERSION,
        },
        "evidence": {
            "energy": {"source": "estimate", "is_estimate": True, "goodput_tokens_per_joule": {"mean": 2.0}},
            "latency": {"ttft_ms": {"p90": 100.0}, "tpot_ms": {"p90": 20.0}},
            "quality": {"ppl_increase": 0.01, "top1_agreement": 0.99, "mean_kl": 0.001},
        },
    }
