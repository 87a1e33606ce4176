"""Serving engines whose requests can never finish fail collect() at once instead of waiting out
its timeout: torch-cb after close(), genai's Engine server after its loop thread failed.
A tiny random Llama built in memory (CPU, fp32) for torch-cb, a fake og.Engine for genai."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from optimizer.backends.ort_genai.serving import GenaiEngineServer
from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

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


def timed_raise(call: Any, match: str) -> float:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=match):
        call()
    return time.monotonic() - start


def test_torch_cb_collect_after_close_fails_at_once() -> None:
    engine = ContinuousBatchingEngine(object(), SETTINGS, "cpu", max_requests=2)
    start = time.monotonic()
    assert engine.collect(0.2) == []  # open, nothing submitted yet: waits as asked
    assert time.monotonic() - start >= 0.15
    engine.close()
    assert timed_raise(lambda: engine.collect(3.0), "closed") < 1.0


def test_torch_cb_collect_after_close_with_requests_fails_at_once() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa")).eval()
    engine = ContinuousBatchingEngine(model, SETTINGS, "cpu", max_requests=2, max_sequence_tokens=1024)
    try:
        engine.submit(list(range(10, 18)), 800)
    finally:
        engine.close()
    assert timed_raise(lambda: engine.collect(3.0), "closed") < 1.0


class FakeRequest:
    def __init__(self, engine: FailingEngine) -> None:
        self.engine = engine

    def begin_turn(self, tokens: object, turn: object) -> int:
        self.engine.pending.append(self)
        self.engine.begun.set()
        return 1

    def cancel_turn(self, turn_id: int) -> bool:
        return True

    def close(self) -> None:
        pass


class FailingEngine:
    """og.Engine whose first step the test releases: it raises."""

    instance: FailingEngine | None = None

    def __init__(self, model: object) -> None:
        self.pending: list[FakeRequest] = []
        self.begun = threading.Event()
        self.fail = threading.Event()
        FailingEngine.instance = self

    def get_capabilities(self) -> Any:
        caps = type("Caps", (), {})()
        caps.configured_max_batch_size, caps.max_request_length, caps.max_scheduled_tokens = 4, 0, 0
        return caps

    def create_event_buffer(self, capacity: int) -> None:
        return None

    def create_request(self, options: object = None) -> FakeRequest:
        return FakeRequest(self)

    def has_pending_requests(self) -> bool:
        return bool(self.pending)

    def run(self, buffer: object) -> list[Any]:
        if self.fail.wait(0.01):
            raise ValueError("the device is gone")
        return []


class Anything:
    def __init__(self, *args: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class FakeOg:
    Engine, RequestOptions, TurnOptions = FailingEngine, Anything, Anything


def started_server() -> tuple[GenaiEngineServer, FailingEngine]:
    server = GenaiEngineServer(FakeOg(), object(), max_requests=2)
    server.submit([1, 2, 3], 4)
    engine = FailingEngine.instance
    assert engine is not None and engine.begun.wait(10)
    return server, engine


def test_genai_collect_after_the_loop_failed_raises_its_failure_at_once() -> None:
    server, engine = started_server()
    try:
        engine.fail.set()
        server._thread.join(10)
        assert timed_raise(lambda: server.collect(3.0), "loop failed: the device is gone") < 1.0
    finally:
        server.close()


def test_genai_collect_waiting_when_the_loop_fails_raises_at_once() -> None:
    server, engine = started_server()
    try:
        threading.Timer(0.2, engine.fail.set).start()
        assert timed_raise(lambda: server.collect(5.0), "loop failed: the device is gone") < 2.0
    finally:
        server.close()
