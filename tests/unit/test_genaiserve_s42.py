"""The genai Engine server tells the first-token time of every unfinished request, those handed to
genai included: a run that gives up on them must not find their TTFT unknown (left out of the
percentiles, and read as missing the TTFT target) when their first token came in time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from optimizer.backends.ort_genai.serving import GenaiEngineServer
from optimizer.measure.serving import Completion

TOKEN, TURN_FINISHED = 1, 2


@dataclass
class FakeEvent:
    request: Any
    flags: Any
    token: int = 7
    finish_reason: str = "MAX_GENERATED_TOKENS"
    error_code: str = "NONE"


class Flags:
    def __init__(self, value: int) -> None:
        self.value = value


class FakeTurn:
    """og.TurnOptions: keeps the generated-token limit."""

    def __init__(self, request: object) -> None:
        self.max_tokens = 0

    def set_max_generated_tokens(self, count: int) -> None:
        self.max_tokens = count

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class FakeRequest:
    def __init__(self, engine: GatedEngine) -> None:
        self.engine, self.left = engine, 0

    def begin_turn(self, tokens: object, turn: FakeTurn) -> int:
        self.left = turn.max_tokens
        with self.engine.cond:
            self.engine.pending.append(self)
            self.engine.cond.notify_all()
        return 1

    def cancel_turn(self, turn_id: int) -> bool:
        self.engine.pending.remove(self)
        return True

    def close(self) -> None:
        pass


class GatedEngine:
    """og.Engine whose steps the test releases one at a time: each step gives every one of the
    first `batch` pending requests a token (the later ones wait, as in genai's static batch)."""

    instance: GatedEngine | None = None
    batch = 1

    def __init__(self, model: object) -> None:
        self.pending: list[FakeRequest] = []
        self.cond = threading.Condition()
        self.steps = threading.Semaphore(0)
        GatedEngine.instance = self

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

    def run(self, buffer: object) -> list[FakeEvent]:
        if not self.steps.acquire(timeout=0.01):
            return []
        events = []
        for request in self.pending[: self.batch]:
            request.left -= 1
            flags = TOKEN | (TURN_FINISHED if request.left == 0 else 0)
            events.append(FakeEvent(request, Flags(flags)))
        self.pending = [r for r in self.pending if r.left > 0]
        return events

    def wait_begun(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.pending) >= count, 10)


class FakeOptions:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class FakeOg:
    Engine, RequestOptions, TurnOptions = GatedEngine, FakeOptions, FakeTurn


@pytest.fixture
def server() -> Iterator[GenaiEngineServer]:
    GatedEngine.batch = 1
    served = GenaiEngineServer(FakeOg(), object(), max_requests=2)
    yield served
    served.close()


def step(server: GenaiEngineServer, request_ids: list[str]) -> None:
    """Release one step and wait until its tokens are published for `request_ids`."""
    engine = GatedEngine.instance
    assert engine is not None
    engine.steps.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        told = server.first_token_times()
        if all(told.get(i) is not None for i in request_ids):
            return
        time.sleep(0.001)
    raise AssertionError(f"no first token published for {request_ids}: {server.first_token_times()}")


def test_requests_handed_to_genai_are_told(server: GenaiEngineServer) -> None:
    engine = GatedEngine.instance
    assert engine is not None
    running, waiting_in_genai, queued = (server.submit([1, 2, 3], 5) for _ in range(3))
    engine.wait_begun(2)
    # handed to genai before any step: no token yet, as the one still queued here
    assert server.first_token_times() == {running: None, waiting_in_genai: None, queued: None}
    before = time.perf_counter()
    step(server, [running])
    told = server.first_token_times()
    first = told[running]
    assert first is not None and before <= first <= time.perf_counter()
    assert told == {running: first, waiting_in_genai: None, queued: None}
    step(server, [running])  # a later token does not move the first one
    assert server.first_token_times()[running] == first
    server.cancel_all()
    assert server.first_token_times() == {} and server.idle


def test_the_told_time_is_the_completions_first_token_time(server: GenaiEngineServer) -> None:
    engine = GatedEngine.instance
    assert engine is not None
    request_id = server.submit([1, 2], 2)
    engine.wait_begun(1)
    step(server, [request_id])
    first = server.first_token_times()[request_id]
    engine.steps.release()
    done: list[Completion] = []
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        done = server.collect(0.1)
    assert [c.request_id for c in done] == [request_id]
    assert done[0].token_times[0] == first and len(done[0].token_times) == 2
    assert server.first_token_times() == {} and server.idle  # finished: not told any more


@pytest.mark.slow
def test_a_run_given_up_knows_the_ttft_of_requests_genai_runs(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real Engine: requests given up on while genai runs them have a known TTFT."""
    pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai (pip install 'wattsmith[ort]')")
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.backends.registry import build_engine
    from optimizer.config import ModelConfig, SloConfig
    from optimizer.measure.energy import EstimateMeter
    from optimizer.measure.serving import serve_stream
    from optimizer.measure.stream import RequestStream, StreamRequest
    from optimizer.model import resolve_model
    from optimizer.space import Candidate
    from unit.factories import target_spec

    workdir = tmp_path_factory.mktemp("genaiserve-s42")
    spec = resolve_model(ModelConfig(source=str(tiny_model_dir)), workdir)
    target = target_spec(cores=1, bf16=False, energy_source="estimate")
    engine: Any = build_engine(spec, Candidate(OrtGenaiSettings(), 3, 1), target, workdir)
    try:
        engine.reserve(512)
        # three short requests, then three of 500 tokens, given up on 20 ms after the last arrival
        requests = tuple(
            StreamRequest(i, 0.01 * i, tuple(range(10, 18)), 500 if i >= 3 else 4) for i in range(6)
        )
        run = serve_stream(
            engine,
            RequestStream(requests, "test"),
            EstimateMeter(1, 5.0, 1.5),
            SloConfig(ttft_ms=2000, tpot_ms=None),
            1,
            1,
            drain_timeout_seconds=0.02,
        )
    finally:
        engine.close()
    unfinished = [r for r in run.requests if not r.token_times]
    assert unfinished, "every request finished: the run gave up on none"
    assert all(r.ttft_known for r in run.requests)
    # genai ran a long request (the others wait for its static batch to end): its first token came
    assert any(r.first_token is not None and r.ttft < 1.0 for r in unfinished)
