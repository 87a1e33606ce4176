"""torch-cb review: prefix counters across managers and without sharing, a sliding-window model
with prefix sharing, close() with requests in flight, and the loop thread's error in a stream's
failure. A tiny random Llama/Mistral built in memory (CPU, fp32)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine, PrefixCounters
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.errors import UserError

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
}
SETTINGS = ContinuousBatchingSettings(precision="fp32", page_size=16)


@pytest.fixture(scope="module")
def llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa")).eval()


@pytest.fixture
def engine(llama: Any) -> Iterator[ContinuousBatchingEngine]:
    engine = ContinuousBatchingEngine(llama, SETTINGS, "cpu", max_requests=2, max_sequence_tokens=64)
    yield engine
    engine.close()


def serve(engine: ContinuousBatchingEngine, prompts: list[list[int]], new_tokens: int) -> None:
    ids = {engine.submit(p, new_tokens) for p in prompts}
    deadline = time.monotonic() + 60
    while ids:
        assert time.monotonic() < deadline
        for completion in engine.collect(0.5):
            assert completion.error is None
            ids.discard(completion.request_id)


def fake_manager() -> tuple[Any, Any]:
    cache = SimpleNamespace(search_prefix_match=lambda request_id, prompt_ids: 16)
    return SimpleNamespace(batch_processor=SimpleNamespace(cache=cache), is_running=lambda: True), cache


def test_a_new_manager_counts_its_lookups_again() -> None:
    """forget_cached_prefixes() starts a new manager, whose request ids restart at req_0: every
    lookup of the stream's repeated run (the one measured) went uncounted ("2 / 0" hits / lookups)."""
    counters = PrefixCounters()
    for _ in range(2):  # the run at another load, then the selection-rate run
        manager, cache = fake_manager()
        counters.attach(manager)
        for request_id in ("req_0", "req_1"):
            cache.search_prefix_match(request_id, [1, 2, 3])
            cache.search_prefix_match(request_id, [1, 2, 3])  # searched again while it waits
    assert (counters.lookups, counters.hits) == (4, 8)


def test_the_repeated_run_of_a_stream_counts_its_lookups(llama: Any) -> None:
    settings = ContinuousBatchingSettings(
        precision="fp32", page_size=16, prefix_sharing=True, kv_cache_tokens=1024
    )
    engine = ContinuousBatchingEngine(llama, settings, "cpu", max_requests=2, max_sequence_tokens=64)
    prompts = [list(range(1, 33)) + [100 + i] * 8 for i in range(4)]
    try:
        engine.forget_cached_prefixes()
        serve(engine, prompts, 2)
        before = engine.prefix_counters()
        engine.forget_cached_prefixes()
        serve(engine, prompts, 2)
        after = engine.prefix_counters()
    finally:
        engine.close()
    assert after["lookups"] - before["lookups"] == 4
    assert after["hits"] - before["hits"] == before["hits"] > 0  # the same reuse as the first run


def test_no_prefix_counters_without_prefix_sharing(engine: ContinuousBatchingEngine) -> None:
    """Without sharing there is no prefix cache: the stored evidence had its prompt tokens with 0
    lookups, where the torch slot loop stores none."""
    serve(engine, [list(range(1, 33)), list(range(1, 41))], 2)
    assert engine.prefix_counters() == {}


def mistral(sliding_window: int | None) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(**TINY, sliding_window=sliding_window, attn_implementation="sdpa")
    return MistralForCausalLM(config).eval()


def test_prefix_sharing_on_a_sliding_window_model_fails_with_the_fix() -> None:
    """transformers turns block sharing off for sliding-window layers: the candidate labelled
    "prefix" was measured without sharing (0 / 0 lookups), beside its own copy without it."""
    settings = ContinuousBatchingSettings(
        precision="fp32", page_size=16, prefix_sharing=True, kv_cache_tokens=512
    )
    engine = ContinuousBatchingEngine(mistral(4096), settings, "cpu", max_requests=1, max_sequence_tokens=64)
    try:
        with pytest.raises(UserError, match="prefix_sharing") as raised:
            engine.submit(list(range(1, 33)), 2)
    finally:
        engine.close()
    assert raised.value.field == "space.torch_cb.prefix_sharing"
    assert "sliding" in str(raised.value) and "false" in raised.value.fix


def test_prefix_sharing_on_a_full_attention_mistral_still_runs() -> None:
    settings = ContinuousBatchingSettings(
        precision="fp32", page_size=16, prefix_sharing=True, kv_cache_tokens=512
    )
    engine = ContinuousBatchingEngine(mistral(None), settings, "cpu", max_requests=1, max_sequence_tokens=64)
    try:
        serve(engine, [list(range(1, 33))], 2)
    finally:
        engine.close()


def test_close_stops_the_requests_in_flight(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() with requests still running (a stream that raised, a generate() that timed out)
    decoded every one of them to its last token first: minutes on a real model."""
    engine = ContinuousBatchingEngine(llama, SETTINGS, "cpu", max_requests=2, max_sequence_tokens=1024)
    engine.reserve(1024)
    steps = 0
    forward = llama.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(llama, "forward", counted)
    for i in range(4):
        engine.submit([1 + i] * 16, 1000)
    deadline = time.monotonic() + 30
    while steps < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thread = engine._manager._generation_thread
    engine.close()
    assert not thread.is_alive()
    assert steps < 500  # 4 requests of 1000 tokens, 2 at a time: 2000 steps to flush them


def test_a_dead_loop_thread_fails_the_next_submit_with_its_error(
    engine: ContinuousBatchingEngine, llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next arrival of a stream comes before its failed requests are collected: the candidate
    failed with 'the continuous-batching thread is not running', the model's error lost."""
    engine.reserve(64)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(llama, "forward", broken)
    engine.submit([1, 2, 3, 4], 4)
    deadline = time.monotonic() + 30
    while engine._manager.is_running():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="not running: .*illegal memory access"):
        engine.submit([5, 6, 7, 8], 4)
