"""Serving engines' request accounting: torch-cb tells the first-token time of the requests a run
gives up on (their TTFT was unknown: left out of the percentiles, read as missing a TTFT target),
and genai's collect() after close() fails at once instead of sleeping out its timeout.
A tiny random Llama built in memory (CPU, fp32) for torch-cb."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.progress import first_token_times
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import SloConfig
from optimizer.measure.energy import EstimateMeter
from optimizer.measure.serving import serve_stream
from optimizer.measure.stream import RequestStream, StreamRequest

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
}


@pytest.fixture(scope="module")
def llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa")).eval()


@pytest.fixture
def engine(llama: Any) -> Iterator[ContinuousBatchingEngine]:
    settings = ContinuousBatchingSettings(precision="fp32", page_size=16)
    engine = ContinuousBatchingEngine(llama, settings, "cpu", max_requests=2, max_sequence_tokens=1024)
    yield engine
    engine.close()


def test_a_run_given_up_knows_the_ttft_of_torch_cb_requests(engine: ContinuousBatchingEngine) -> None:
    """Two short requests, then two of 800 tokens given up on 0.3 s after the last arrival: each
    one's TTFT is known (its first token's time, or none by the give-up), none left unknown."""
    requests = tuple(StreamRequest(i, 0.01 * i, tuple(range(10, 18)), 800 if i >= 2 else 4) for i in range(4))
    run = serve_stream(
        engine,
        RequestStream(requests, "test"),
        EstimateMeter(1, 5.0, 1.5),
        SloConfig(ttft_ms=2000, tpot_ms=None),
        1,
        1,
        drain_timeout_seconds=0.3,
    )
    assert [r for r in run.requests if not r.token_times], "every request finished: none given up"
    assert all(r.ttft_known for r in run.requests)


def test_the_told_time_is_the_completions_first_token_time(engine: ContinuousBatchingEngine) -> None:
    request_id = engine.submit(list(range(10, 18)), 24)
    first = None
    deadline = time.monotonic() + 60
    while first is None:
        assert time.monotonic() < deadline, "no first token in 60 s"
        told = engine.first_token_times()
        assert set(told) <= {request_id}
        first = told.get(request_id)
        time.sleep(0.001)
    done = []
    while not done:
        assert time.monotonic() < deadline
        done = engine.collect(0.5)
    assert [c.request_id for c in done] == [request_id] and done[0].token_times[0] == first
    assert engine.first_token_times() == {}  # finished: not told any more


def state(request_id: str, stamps: list[float] | None, reset: int = 0) -> Any:
    return SimpleNamespace(request_id=request_id, timestamps=stamps, _true_initial_tokens=reset)


def test_what_the_manager_tells_of_each_request() -> None:
    inbox: queue.Queue[Any] = queue.Queue()
    inbox.put(state("queued", []))
    scheduler = SimpleNamespace(
        waiting_requests={"waiting": state("waiting", []), "reset": state("reset", [], reset=8)},
        active_requests={"prefill": state("prefill", []), "decoding": state("decoding", [2.5, 2.6])},
    )
    manager = SimpleNamespace(batch_processor=SimpleNamespace(scheduler=scheduler), input_queue=inbox)
    ids = ["queued", "waiting", "reset", "prefill", "decoding", "finished"]
    # a soft-reset request lost its first token's time and a finished one is collect's: not told
    assert first_token_times(manager, ids) == {
        "queued": None,
        "waiting": None,
        "prefill": None,
        "decoding": 2.5,
    }
    assert first_token_times(SimpleNamespace(), ids) == {}  # internals moved: nothing claimed


def test_genai_collect_after_close_fails_at_once(tmp_path: Path) -> None:
    engine = OrtGenaiEngine(object(), object(), OrtGenaiSettings(), tmp_path, max_requests=2)
    assert engine.collect(0.05) == []  # open, nothing submitted yet: waits as asked
    engine.close()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="closed"):
        engine.collect(3.0)
    assert time.monotonic() - start < 1.0
