"""Roofline: the tokens/J upper bound by hand, its monotonic properties, rates, pruning reasons."""

from __future__ import annotations

import pytest

from optimizer.config import SloConfig, WorkloadConfig
from optimizer.model import ModelShape
from optimizer.search import roofline as roofline_module
from optimizer.search.roofline import Roofline, RooflineRates, prune_reason, rates_for, roofline_bound

SHAPE = ModelShape(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=100,
    num_parameters=100 * 64 + 1_000_000,  # body: 1M parameters
)
RATES = RooflineRates(
    bytes_per_second=1e9, flops_per_second=1e12, floor_watts=10.0, cache_bytes=0, source="test"
)
WORKLOAD = WorkloadConfig(prompt_tokens=4, max_new_tokens=2)


def test_the_bound_by_hand(make_candidate) -> None:
    bound = roofline_bound(make_candidate(batch_size=1), SHAPE, WORKLOAD, RATES, cuda=False)
    # fp32 body weights 4 MB per forward at 1 GB/s; KV 2 layers x 2 heads x 16 x 4 B x (K, V) = 512 B/token
    assert bound.prefill_seconds == pytest.approx(4e-3)
    assert bound.step_seconds == pytest.approx((4e6 + 4 * 512) / 1e9)
    decode = (2 * 4e6 + (2 * 4 + 1) * 512) / 1e9  # two steps over contexts of 4 and 5 tokens
    assert bound.tokens_per_joule == pytest.approx(2 / (10.0 * (4e-3 + decode)))


def test_bigger_batches_and_smaller_weights_raise_the_bound(make_candidate) -> None:
    def tpj(**kw: object) -> float:
        return roofline_bound(make_candidate(**kw), SHAPE, WORKLOAD, RATES, cuda=False).tokens_per_joule

    assert tpj(batch_size=1) < tpj(batch_size=8) < tpj(batch_size=64)
    assert tpj(precision="fp32") < tpj(precision="bf16") < tpj(precision="bf16", quantization="int8-weight")
    assert tpj(kv_cache="dynamic", batch_size=512) < tpj(kv_cache="hqq-4", batch_size=512)


def test_weights_that_fit_in_cache_move_no_dram_bytes(make_candidate) -> None:
    cached = RooflineRates(1e9, 1e12, 10.0, cache_bytes=8 << 20, source="test")
    candidate = make_candidate(batch_size=1)
    assert roofline_bound(candidate, SHAPE, WORKLOAD, cached, cuda=False).tokens_per_joule > 100 * (
        roofline_bound(candidate, SHAPE, WORKLOAD, RATES, cuda=False).tokens_per_joule
    )


def test_reasons_to_prune(make_candidate, make_result, make_performance) -> None:
    model = Roofline(SHAPE, WORKLOAD, RATES, cuda=False)
    small, big = make_candidate(batch_size=1), make_candidate(batch_size=64)
    ceiling = model.bound(small).tokens_per_joule
    better = make_result(candidate=big, performance=make_performance(goodput_tokens_per_joule=ceiling * 2))
    worse = make_result(candidate=big, performance=make_performance(goodput_tokens_per_joule=ceiling / 2))
    assert model.prune_reason(small, None) is None
    assert model.prune_reason(small, worse) is None
    reason = model.prune_reason(small, better)
    assert reason is not None and reason.startswith("roofline: <=") and big.label() in reason
    step_ms = model.bound(small).step_seconds * 1000
    assert "workload.slo.tpot_ms" in str(
        prune_reason(model.bound(small), None, SloConfig(tpot_ms=step_ms / 2))
    )
    assert prune_reason(model.bound(small), None, SloConfig(tpot_ms=step_ms * 2)) is None
    prefill_ms = model.bound(small).prefill_seconds * 1000
    assert "ttft_ms" in str(
        prune_reason(model.bound(small), None, SloConfig(tpot_ms=None, ttft_ms=prefill_ms / 2))
    )


def test_rates_from_a_preset_or_measured_with_headroom(make_target, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = make_target(kind="cuda", memory_bandwidth_gb_per_s=3350, peak_bf16_tflops=989)
    rates = rates_for(gpu, idle_watts=100.0, headroom=2.0)
    assert rates is not None
    assert (rates.bytes_per_second, rates.flops_per_second, rates.floor_watts) == (3350e9, 989e12, 50.0)
    assert "preset" in rates.source
    assert rates_for(make_target(kind="cuda"), 100.0, 2.0) is None  # no preset: no bound, not a wrong one
    monkeypatch.setattr(roofline_module, "measure_cpu_rates", lambda threads: (10e9, 100e9))
    cpu = rates_for(make_target(), idle_watts=6.0, headroom=2.0)
    assert cpu is not None
    assert (cpu.bytes_per_second, cpu.flops_per_second, cpu.floor_watts) == (20e9, 200e9, 3.0)
    assert cpu.source.startswith("ASSUMPTION")


def test_measured_cpu_rates_are_plausible() -> None:
    bandwidth, flops = roofline_module.measure_cpu_rates(threads=1, repeats=1)
    assert 0.1e9 < bandwidth < 10e12 and 0.1e9 < flops < 1e15
