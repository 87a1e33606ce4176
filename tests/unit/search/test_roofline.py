"""Roofline: the tokens/J upper bound by hand, its monotonic properties, rates, pruning reasons."""

from __future__ import annotations

from dataclasses import replace

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
    # the prefill yields the first token; one decode step yields the second, over 5 tokens
    decode = (1 * 4e6 + 5 * 512) / 1e9
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
    # a bound under 10 ms keeps its digits: ">= 0 ms > 0.001" would read as a contradiction
    tiny = replace(model.bound(small), step_seconds=0.0042)
    assert ">= 4.2 ms > workload.slo.tpot_ms 0.001" in str(prune_reason(tiny, None, SloConfig(tpot_ms=0.001)))
    prefill_ms = model.bound(small).prefill_seconds * 1000
    assert "ttft_ms" in str(
        prune_reason(model.bound(small), None, SloConfig(tpot_ms=None, ttft_ms=prefill_ms / 2))
    )


def test_on_a_stream_the_batch_size_bounds_no_latency(make_candidate) -> None:
    """A stream's engine admits up to `batch_size` requests: at a low load one runs alone, so a
    batch's prefill is no lower bound of TTFT (b16 and b64 were pruned for SLOs they could meet)."""
    stream = WorkloadConfig(kind="serving", prompt_tokens=64, max_new_tokens=32)
    one_pass = 4e-3  # the fp32 body, 4 MB at 1 GB/s
    for batch in (1, 16, 64):
        bound = roofline_bound(make_candidate(batch_size=batch), SHAPE, stream, RATES, cuda=False)
        assert bound.prefill_seconds == bound.step_seconds == pytest.approx(one_pass)
        assert prune_reason(bound, None, SloConfig(ttft_ms=5, tpot_ms=5)) is None
        # at most `batch` tokens per step: a bound for any lengths, cached prefixes included
        assert bound.tokens_per_joule == pytest.approx(batch / (10.0 * one_pass))
        offline = roofline_bound(make_candidate(batch_size=batch), SHAPE, WORKLOAD, RATES, cuda=False)
        assert bound.tokens_per_joule > offline.tokens_per_joule


def test_on_a_gpu_each_process_of_a_layout_has_its_own_device(make_candidate) -> None:
    """tp2: each rank moves half the weights (a step bound half as long), on twice the devices
    (the same tokens/J); r2: each replica runs half the batch. On a CPU they share one machine."""
    model = WorkloadConfig(prompt_tokens=4, max_new_tokens=2)

    def bound(cuda: bool, **layout: int):  # type: ignore[no-untyped-def]
        candidate = replace(make_candidate(batch_size=8), **layout)
        return roofline_bound(candidate, SHAPE, model, RATES, cuda=cuda)

    one, tp2, r2 = bound(True), bound(True, tensor_parallel=2), bound(True, replicas=2)
    assert tp2.step_seconds == pytest.approx(one.step_seconds / 2)
    assert tp2.tokens_per_joule == pytest.approx(one.tokens_per_joule)
    assert r2.prefill_seconds == pytest.approx(one.prefill_seconds)  # weight-bound: 4 or 8 prompts
    assert r2.step_seconds < one.step_seconds  # 4 requests' KV, not 8
    assert bound(False, tensor_parallel=2) == bound(False)


def test_rates_from_a_preset_or_measured_with_headroom(make_target, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = make_target(kind="cuda", memory_bandwidth_gb_per_s=3350, peak_bf16_tflops=989)
    rates = rates_for(gpu, idle_watts=100.0, headroom=2.0)
    assert rates is not None
    assert (rates.bytes_per_second, rates.flops_per_second, rates.floor_watts) == (3350e9, 989e12, 50.0)
    assert "preset" in rates.source
    assert rates_for(make_target(kind="cuda"), 100.0, 2.0) is None  # no preset: no bound, not a wrong one
    monkeypatch.setattr(roofline_module, "measure_cpu_rates", lambda threads: (10e9, 100e9))
    monkeypatch.setattr(roofline_module, "cpu_peak_flops", lambda cores: 150e9)
    cpu = rates_for(make_target(), idle_watts=6.0, headroom=2.0)
    assert cpu is not None
    assert (cpu.bytes_per_second, cpu.flops_per_second, cpu.floor_watts) == (20e9, 200e9, 3.0)
    assert cpu.source.startswith("ASSUMPTION")
    monkeypatch.setattr(roofline_module, "cpu_peak_flops", lambda cores: 500e9)  # the vector peak, higher
    assert (rates := rates_for(make_target(), 6.0, 2.0)) is not None and rates.flops_per_second == 500e9


def test_measured_cpu_rates_are_plausible() -> None:
    bandwidth, flops = roofline_module.measure_cpu_rates(threads=1, repeats=1)
    assert 0.1e9 < bandwidth < 10e12 and 0.1e9 < flops < 1e15


def test_the_cache_is_every_instance_of_the_top_level(tmp_path) -> None:
    """Four CPUs in two core complexes, each with its own 32 MiB L3: 64 MiB, not cpu0's 32."""

    def cache(cpu: int, index: int, level: int, shared: str, size: str) -> None:
        folder = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "level").write_text(f"{level}\n")
        (folder / "shared_cpu_list").write_text(f"{shared}\n")
        (folder / "size").write_text(f"{size}\n")

    for cpu in range(4):
        cache(cpu, 2, 2, str(cpu), "512K")
        cache(cpu, 3, 3, "0-1" if cpu < 2 else "2-3", "32768K")
    assert roofline_module._llc_bytes(tmp_path) == 64 << 20
    assert roofline_module._llc_bytes(tmp_path / "missing") == 8 << 20


def test_moved_bytes_never_exceed_the_footprint() -> None:
    """The roofline's bytes are lower bounds; the memory check's upper bounds. Where they differ,
    the roofline takes the smaller: fp16 on TensorRT's EP, int4 with an int8 lm_head."""
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
    from optimizer.backends.registry import spec_for
    from optimizer.backends.tensorrt.settings import TensorRTSettings
    from optimizer.backends.torch.settings import TorchSettings
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

    every = [
        TorchSettings(precision="bf16", quantization="int4-weight", kv_cache="hqq-4"),
        TorchSettings(kv_cache="offloaded"),
        ContinuousBatchingSettings(precision="bf16", kv_offload_gib=1.0),
        OrtOnnxSettings(precision="fp16", provider="tensorrt"),
        OrtOnnxSettings(quantization="int8-dynamic"),
        OrtGenaiSettings(precision="int4", int8_lm_head=True),
        TensorRTSettings("fp16"),
    ]
    for settings in every:
        spec = spec_for(settings)
        moved, fp = spec.moved_bytes(settings, 30), spec.footprint(settings, 30)
        assert moved.weight_bytes <= fp.weight_bytes and moved.kv_bytes <= fp.kv_bytes, settings
    assert spec_for(every[3]).moved_bytes(every[3], 30).weight_bytes == 2.0  # footprint: 4
    assert spec_for(every[5]).moved_bytes(every[5], 30).weight_bytes == 0.5


def test_the_bound_holds_for_every_candidate_of_the_recorded_grid() -> None:
    """On the recorded CPU grid (168 candidates, evals/results/2026-11-26-search-cost), no measured
    candidate beat its bound: more tokens/J, a shorter TPOT or TTFT than the roofline allows. (With
    the measured matmul rate alone, fp32 b16's prefill ran at 150 GFLOP/s against a 149 bound.)"""
    import dataclasses
    import json
    from pathlib import Path

    from optimizer.space import Candidate

    record = Path(__file__).resolve().parents[3] / "evals/results/2026-11-26-search-cost/search_cost.json"
    facts = json.loads(record.read_text())["facts"]
    shape, recorded = ModelShape(**facts["shape"]), RooflineRates(**facts["rates"])
    # the recorded machine: AMD EPYC, AVX-512, 2596 MHz listed, 2 cores
    peak = roofline_module.cpu_peak_flops(2, "cpu MHz\t\t: 2596.096\nflags\t\t: fma avx2 avx512f\n")
    assert peak == pytest.approx(2 * 2 * 16 * 2 * 2.596096e9)
    rates = dataclasses.replace(recorded, flops_per_second=max(recorded.flops_per_second, peak))
    quick = WorkloadConfig(prompt_tokens=32, max_new_tokens=16)  # the grid's workload=quick
    checked = 0
    for row in json.loads(record.read_text())["grid_history"]:
        performance = row["performance"]
        if performance is None:
            continue
        bound = roofline_bound(Candidate.from_dict(row["candidate"]), shape, quick, rates, cuda=False)
        assert performance["tokens_per_joule"]["max"] <= bound.tokens_per_joule, row["label"]
        assert performance["latency"]["tpot_ms"]["p50"] >= bound.step_seconds * 1000, row["label"]
        assert performance["latency"]["ttft_ms"]["p50"] >= bound.prefill_seconds * 1000, row["label"]
        checked += 1
    assert checked >= 50
