"""Checks that need a real NVIDIA GPU: the NVML meter, the captured decode loop, GPU quantization."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _target():  # type: ignore[no-untyped-def]
    from optimizer.config import TargetConfig
    from optimizer.target import detect_target

    return detect_target(TargetConfig(kind="cuda"))


def _engine(  # type: ignore[no-untyped-def]
    model_dir: Path,
    tmp_path: Path,
    settings_type: type | None = None,
    batch_size: int = 2,
    **settings: object,
):
    """An engine built as a search builds it; TorchSettings unless another settings type is named."""
    from optimizer.backends.registry import build_engine
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model
    from optimizer.space import Candidate, TorchSettings

    model = resolve_model(ModelConfig(source=str(model_dir)), tmp_path)
    candidate = Candidate((settings_type or TorchSettings)(**settings), batch_size=batch_size, threads=0)  # type: ignore[arg-type]
    return build_engine(model, candidate, _target(), tmp_path)


def test_detect_target_reads_the_gpu() -> None:
    target = _target()
    assert target.kind == "cuda" and target.gpu is not None
    assert target.gpu.memory_bytes > 1 << 30
    assert target.device == "cuda:0"
    assert target.fp8 == (target.gpu.compute_capability >= (8, 9))


def test_a_plain_run_on_this_gpu_takes_the_gpu_serving_defaults() -> None:
    from optimizer.config import compose_run_config
    from optimizer.target_defaults import compose_for_target

    cfg = compose_for_target(["target=auto"])
    assert cfg.space == compose_run_config(["space=gpu-default"]).space
    assert cfg.workload == compose_run_config(["workload=gpu-chat"]).workload


def test_nvml_window_measures_load_and_agrees_with_polled_power() -> None:
    import torch

    from optimizer.measure.energy import NvmlMeter, measure_idle_watts

    meter = NvmlMeter([0])
    idle = measure_idle_watts(meter, 1.0)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with meter.window() as window:
        end = time.perf_counter() + 2.5
        while time.perf_counter() < end:
            for _ in range(20):
                x = (x @ x).clamp_(-1, 1)
            torch.cuda.synchronize()
    assert window.source == "nvml"
    assert window.seconds >= 2.5
    assert window.watts > idle > 0
    assert window.polled_joules is not None
    assert abs(window.polled_joules / window.joules - 1) < 0.10  # instant power, 50 ms polls
    assert window.temperature_c is not None and window.sm_clock_mhz is not None
    assert not window.warnings  # 2.5 s >= 20 counter periods


def test_graph_loop_matches_hf_greedy(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    import torch

    prompts = torch.randint(0, 2048, (2, 16))
    hf = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32", kv_cache="static", loop="hf")
    graph = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32", kv_cache="static", loop="graph")
    expected = hf.generate(prompts, 8)
    first = graph.generate(prompts, 8)  # captures
    second = graph.generate(prompts, 8)  # replays
    assert expected.token_ids is not None and first.token_ids is not None and second.token_ids is not None
    assert torch.equal(first.token_ids, expected.token_ids)
    assert torch.equal(second.token_ids, expected.token_ids)
    assert 0 < second.ttft_seconds < second.total_seconds


@pytest.mark.parametrize("quantization", ["int8-weight", "int4-weight", "fp8"])
def test_quantized_engines_generate_and_score(
    quantization: str, tiny_cuda_model_dir: Path, tmp_path: Path
) -> None:
    import torch

    if quantization == "fp8" and not _target().fp8:
        pytest.skip("fp8 needs compute capability >= 8.9")
    engine = _engine(
        tiny_cuda_model_dir,
        tmp_path,
        precision="bf16",
        quantization=quantization,
        kv_cache="static",
        loop="graph",
    )
    generation = engine.generate(torch.randint(0, 2048, (2, 16)), 6)
    assert generation.token_ids is not None and generation.token_ids.shape == (2, 6)
    logits = engine.score(torch.randint(0, 2048, (2, 16)))
    assert logits.shape == (2, 16, 2048) and torch.isfinite(logits).all()


def test_hf_generate_with_compile_runs(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    """The plain-HF plateau reference: static cache + torch.compile inside generate."""
    import torch

    engine = _engine(tiny_cuda_model_dir, tmp_path, precision="bf16", kv_cache="static", compile=True)
    first = engine.generate(torch.randint(0, 2048, (2, 16)), 6)
    second = engine.generate(torch.randint(0, 2048, (2, 16)), 6)
    assert first.token_ids is not None and first.token_ids.shape == (2, 6)
    assert second.total_seconds < first.total_seconds  # the first call compiled


@pytest.mark.parametrize("compile", ["none", "model", "layers"])
def test_sdpa_gqa_graph_loop_matches_hf_sdpa(compile: str, tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    """Packing the decode queries per KV head changes no token, eager or compiled (the whole model,
    or its layers one by one: compile_layers), in a CUDA graph."""
    import torch

    prompts = torch.randint(0, 2048, (3, 16))
    hf = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32", kv_cache="static", loop="hf")
    packed = _engine(
        tiny_cuda_model_dir,
        tmp_path,
        precision="fp32",
        kv_cache="static",
        loop="graph",
        attention="sdpa_gqa",
        compile=compile != "none",
        compile_layers=compile == "layers",
    )
    expected = hf.generate(prompts, 8).token_ids
    assert packed.model.config._attn_implementation == "sdpa_gqa"
    for _ in range(2):  # capture, then replay
        assert torch.equal(packed.generate(prompts, 8).token_ids, expected)


def test_continuous_engine_matches_hf_greedy_on_cuda(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    import torch

    prompts = torch.randint(0, 2048, (4, 16))
    hf = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32")
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

    continuous = _engine(tiny_cuda_model_dir, tmp_path, ContinuousBatchingSettings, precision="fp32")
    try:
        expected = hf.generate(prompts, 6).token_ids
        for _ in range(2):  # the manager (and its CUDA graphs) is reused
            generation = continuous.generate(prompts, 6)
            assert torch.equal(generation.token_ids, expected)
            assert generation.request_latencies is not None and len(generation.request_latencies) == 4
            assert all(ttft > 0 and tpot >= 0 for ttft, tpot in generation.request_latencies)
    finally:
        continuous.close()


# the slot loop's settings in the GPU tests (fp32: token for token against HF greedy)
SLOT_LOOP: dict[str, object] = {
    "precision": "fp32",
    "kv_cache": "static",
    "loop": "slots",
    "attention": "sdpa_gqa",
}


def test_slot_engine_reuses_prefixes_on_cuda(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    """prefix_sharing on CUDA (captured steps; the store rows lie past the captured ones): a
    conversation's second turn copies its first turn, another conversation the shared system
    prompt; each answer as HF decodes it alone."""
    import torch

    hf = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32")
    slots = _engine(tiny_cuda_model_dir, tmp_path, batch_size=4, **SLOT_LOOP, prefix_sharing=True)
    try:
        system, first, second, other = (torch.randint(0, 2048, (n,)).tolist() for n in (48, 10, 20, 12))
        turns = [system + first, system + first + second, system + other]
        for prompt in turns:
            (done,) = slots.generate(torch.tensor([prompt]), 6).token_ids.tolist()
            assert done == hf.generate(torch.tensor([prompt]), 6).token_ids[0].tolist()
        counters = slots.prefix_counters()
        assert counters["hits"] == 2 and counters["reused_prompt_tokens"] >= 58 + 48, counters
    finally:
        slots.close()


# compile_layers before the whole compile: the one call gives these tests 60 s (gpu_check.sh), and
# the serving section compiles a whole slot model anyway
@pytest.mark.parametrize("compile", ["none", "layers", "model"])
def test_slot_engine_matches_hf_greedy_on_cuda(
    compile: str, tiny_cuda_model_dir: Path, tmp_path: Path
) -> None:
    """loop=slots captures its step as CUDA graphs, one per step size (8 and 10 rows for 10
    slots) and key span (256 and 512 columns for requests of up to 512 tokens); with `compile`
    the step is first compiled once for all four (rows and span dynamic), and the prefill at the
    build, once for one row and once for more: an offline batch on every slot, then a stream of
    mixed lengths on the front slots (one crossing from span 256 to 512), each request as HF
    decodes it alone, and no prefill compiled while serving. With compile_layers, the same three
    graphs (step, one-row and many-row prefill) serve every layer."""
    import torch
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from optimizer.backends.torch import compiling
    from optimizer.backends.torch.slot_decoder import SlotDecoder

    torch._dynamo.reset()
    hf = _engine(tiny_cuda_model_dir, tmp_path, precision="fp32")
    slots = _engine(
        tiny_cuda_model_dir,
        tmp_path,
        batch_size=10,
        **SLOT_LOOP,
        compile=compile != "none",
        compile_layers=compile == "layers",
    )
    try:
        slots.reserve(512)  # one build (one compile) for the whole test
        prompts = torch.randint(0, 2048, (10, 16))
        assert torch.equal(slots.generate(prompts, 8).token_ids, hf.generate(prompts, 8).token_ids)
        assert sorted(slots.decoder.graphs) == [(n, span) for n in (8, 10) for span in (256, 512)]
        asked = [
            (torch.randint(0, 2048, (n,)).tolist(), new)
            for n, new in ((5, 9), (40, 3), (11, 1), (23, 12), (250, 12))  # the last: spans 256, 512
        ]
        ids = {slots.submit(prompt, new): (prompt, new) for prompt, new in asked}
        done: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while len(done) < len(ids) and time.monotonic() < deadline:
            done.update({c.request_id: c for c in slots.collect(1.0)})
        for request_id, (prompt, new) in ids.items():
            want = hf.generate(torch.tensor([prompt]), new).token_ids
            assert list(done[request_id].token_ids) == want[0].tolist()  # type: ignore[attr-defined]
        assert slots.decoder.max_sequence_tokens == 512  # not rebuilt
        prefill_graphs = len(_debug_get_cache_entry_list(SlotDecoder._prefill.__code__))
        assert prefill_graphs == (2 if compile == "model" else 0)
        layer_graphs = len(_debug_get_cache_entry_list(compiling.run_layer.__code__))
        assert layer_graphs == (3 if compile == "layers" else 0)
    finally:
        slots.close()
