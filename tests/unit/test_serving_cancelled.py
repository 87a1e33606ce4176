"""Requests a serving run gave up on: their TTFT is what the engine told of them (a first token
long before the give-up, or none: still queued), and left out of the percentiles when it told
nothing; a window shorter than workload.min_window_seconds is flagged."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.queued import QueuedServer
from optimizer.backends.torch.slot_requests import SlotRequest, SlotTable
from optimizer.config import LengthConfig, SloConfig, WorkloadConfig
from optimizer.measure import load, serving
from optimizer.measure.energy import Measurement
from optimizer.measure.load import measure_serving
from optimizer.measure.serving import Completion, RequestRecord, serve_stream
from optimizer.measure.stream import RequestStream, TextTokens, generate_stream


class Meter:
    source, idle_watts = "fake", 2.0

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        measurement = Measurement(source=self.source, idle_watts=self.idle_watts)
        start = time.perf_counter()
        yield measurement
        measurement.seconds = time.perf_counter() - start
        measurement.joules = 10.0 * measurement.seconds


class Fifo:
    """`slots` requests at a time, first come first served: the first token `ttft` after a request
    starts, then one every `tpot`. Finished requests only, as every engine's `collect`."""

    def __init__(self, slots: int = 1000, ttft: float = 0.01, tpot: float = 0.002) -> None:
        self.slots, self.ttft, self.tpot = slots, ttft, tpot
        self.free_at = [0.0] * slots
        self.pending: list[Completion] = []
        self.count = 0

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        now = time.perf_counter()
        slot = min(range(self.slots), key=self.free_at.__getitem__)
        start = max(now, self.free_at[slot])
        times = tuple(start + self.ttft + i * self.tpot for i in range(max_new_tokens))
        self.free_at[slot] = times[-1]
        self.count += 1
        self.pending.append(Completion(str(self.count), tuple(range(max_new_tokens)), times))
        return str(self.count)

    def collect(self, timeout_seconds: float) -> list[Completion]:
        time.sleep(min(timeout_seconds, 0.002))
        now = time.perf_counter()
        done = [c for c in self.pending if c.token_times[-1] <= now]
        self.pending = [c for c in self.pending if c.token_times[-1] > now]
        return done

    def cancel_all(self) -> None:
        self.pending = []


class TellingFifo(Fifo):
    def first_token_times(self) -> dict[str, float | None]:
        now = time.perf_counter()
        return {c.request_id: c.token_times[0] if c.token_times[0] <= now else None for c in self.pending}


def stream(requests: int = 40, rate: float = 10.0, output: int = 20, warmup: int = 4) -> RequestStream:
    cfg = WorkloadConfig(
        kind="serving",
        requests=requests,
        rate=rate,
        arrivals="constant",
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", output, 1, 64),
        warmup_requests=warmup,
        drain_requests=warmup,
    )
    return generate_stream(cfg, TextTokens(list(range(100, 200))))


@pytest.fixture(autouse=True)
def _no_cpu_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    real = serving.serve_stream
    monkeypatch.setattr(load, "serve_stream", lambda *a, **k: real(*a, **k, probe=lambda: 1000.0))


def test_requests_given_up_with_no_first_token_told_are_left_out_of_ttft() -> None:
    """TPOT-bound: every first token after 10 ms, 200 ms per token after it. The requests still
    running at the give-up counted `give-up - arrival` (p90 3.5 s) and broke the TTFT target."""
    slo = SloConfig(ttft_ms=1000, tpot_ms=100)
    perf = measure_serving(Fifo(ttft=0.01, tpot=0.2), stream(), Meter(), slo, 1, 4, 4, 10.0, 0.5)
    assert perf.latency.ttft_ms["p99"] < 100
    assert not any(v.startswith("TTFT") for v in perf.slo_violations), perf.slo_violations
    # the verdict stays: they never finished (and the served ones missed TPOT)
    assert any("unbounded" in v for v in perf.slo_violations)
    assert perf.serving is not None and perf.latency.requests < perf.serving.window_requests
    left_out = perf.serving.window_requests - perf.latency.requests
    assert (
        f"{left_out} request(s) given up unfinished with no first-token time" in perf.windows[0].warnings[-1]
    )


def test_a_told_first_token_is_the_ttft_and_a_queued_request_keeps_its_lower_bound() -> None:
    # 2 at a time for 3.8 s each, 20 arriving a second: none finishes, a queue grows
    engine = TellingFifo(slots=2, ttft=0.01, tpot=0.2)
    slo = SloConfig(ttft_ms=1000, tpot_ms=100)
    run = serve_stream(engine, stream(rate=20.0), Meter(), slo, 4, 4, 0.5, probe=lambda: 1.0)
    assert not any(r.token_times for r in run.requests)
    running = [r for r in run.requests if r.first_token is not None]
    queued = [r for r in run.requests if r.no_first_token]
    assert [r.index for r in running] == [0, 1] and len(queued) == 38
    for record in running:
        assert record.gave_up_at is not None and record.ttft_known
        assert record.ttft == pytest.approx(0.01, abs=0.04)  # not its 2.5 s to the give-up
    for record in queued:
        assert record.gave_up_at is not None and record.ttft_known
        assert record.ttft == pytest.approx(record.gave_up_at - record.arrival) and not record.met_slo
    stuck = TellingFifo(2, 0.01, 0.2)
    perf = measure_serving(stuck, stream(rate=20.0), Meter(), SloConfig(ttft_ms=1000), 1, 4, 4, 20.0, 1.5)
    assert perf.latency.ttft_ms["p90"] > 1000  # the queue's wait is in the percentile
    assert any(v.startswith("TTFT p90") for v in perf.slo_violations)


def record(index: int, ttft: float | None) -> RequestRecord:
    """Finished with this TTFT, or (None) given up with no first token told."""
    if ttft is None:
        return RequestRecord(index, 0.0, 0.0, (), 8, 4, False, gave_up_at=5.0)
    return RequestRecord(index, 0.0, 0.0, (ttft, ttft + 0.01), 8, 2, True)


@pytest.mark.parametrize(
    ("known", "unknown", "broken"),
    [
        ([0.1] * 9, 1, True),  # p90 of 10: rank 8.1 reaches the unknown one
        ([0.1] * 10, 1, False),  # rank 9.0: exactly the 10th, a known one
        ([0.1] * 18 + [0.6, 0.6], 1, True),  # rank 18.0 of 21: a known 600 ms
        ([0.1] * 19 + [0.6], 1, False),  # rank 18.0: 100 ms
        ([0.1] * 10, 0, False),
    ],
)
def test_a_ttft_only_slo_counts_unknown_first_tokens_as_missed(
    known: list[float], unknown: int, broken: bool
) -> None:
    judged = [record(i, t) for i, t in enumerate([*known, *[None] * unknown])]
    violation = load.unknown_ttft_violation(judged, SloConfig(ttft_ms=500, tpot_ms=None))
    assert bool(violation) == broken
    if broken:
        assert f"{unknown} of {len(judged)} requests" in violation[0]


def test_a_ttft_only_slo_is_not_passed_by_leaving_requests_out() -> None:
    """Their time to the give-up broke the target before they were left out: it still breaks."""
    slo = SloConfig(ttft_ms=1000, tpot_ms=None)
    perf = measure_serving(Fifo(ttft=0.01, tpot=0.2), stream(), Meter(), slo, 1, 4, 4, 10.0, 0.5)
    assert perf.latency.ttft_ms["p90"] < 100
    assert [v.split(":")[0] for v in perf.slo_violations] == ["TTFT p90 unknown"], perf.slo_violations


def test_a_serving_window_shorter_than_min_window_seconds_is_flagged() -> None:
    cfg = WorkloadConfig(
        kind="serving",
        rate=40.0,
        requests=40,
        repeats=1,
        min_window_seconds=5.0,
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", 4, 1, 64),
    )
    s = generate_stream(cfg, TextTokens(list(range(100, 200))))
    perf = load.measure_load(Fifo(), 1, {cfg.rate: s}, Meter(), cfg)  # type: ignore[arg-type]
    (window,) = perf.windows
    assert window.seconds < 2
    assert any(
        w.startswith(f"window {window.seconds:.2f} s < workload.min_window_seconds 5 s")
        and "workload.requests" in w
        and "workload.rate" in w
        for w in window.warnings
    ), window.warnings
    short = dataclasses.replace(cfg, min_window_seconds=0.1)
    again = load.measure_load(Fifo(), 1, {cfg.rate: s}, Meter(), short)  # type: ignore[arg-type]
    assert not any("min_window_seconds" in w for w in again.windows[0].warnings)


# -- what each engine tells ----------------------------------------------------------------------


def test_the_slot_table_tells_running_first_tokens_and_waiting_requests() -> None:
    table = SlotTable(3)
    running = {0: SlotRequest("a", (1, 2), 4), 1: SlotRequest("b", (1,), 4)}
    waiting = [SlotRequest("c", (3,), 4)]
    for slot, request in running.items():
        table.admit(slot, request)
    table.record(np.array([0]), [7], 12.5)  # only slot 0's prefill has returned
    assert table.first_times(running, waiting) == {"a": 12.5, "b": None, "c": None}


def test_the_slot_engine_tells_its_requests_first_tokens() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimizer.backends.torch.slot_server import SlotEngine

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    engine = SlotEngine(LlamaForCausalLM._from_config(config).eval(), 1, "cpu", step_interval_seconds=0.05)
    try:
        engine.reserve(200)
        ids = [engine.submit([1, 2, 3], 150) for _ in range(3)]
        deadline = time.monotonic() + 30
        while (told := engine.first_token_times())[ids[0]] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = told[ids[0]]
        assert first is not None and first <= time.perf_counter()
        assert told[ids[1]] is None and told[ids[2]] is None  # waiting for the one slot
        engine.cancel_all()
        assert engine.first_token_times() == {}
    finally:
        engine.close()


class SlowBatches:
    """A lockstep engine whose batch takes `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, threading.Event()

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        self.started.set()
        time.sleep(self.seconds)
        rows = prompt_ids.shape[0]
        return Generation(
            rows, max_new_tokens, 0.01, self.seconds, torch.zeros(rows, max_new_tokens, dtype=torch.int64)
        )


def test_the_queued_server_tells_its_queue_has_no_token() -> None:
    batch = SlowBatches(0.5)
    server = QueuedServer(batch, 1)  # type: ignore[arg-type]
    try:
        ids = [server.submit([1, 2], 2) for _ in range(3)]
        assert batch.started.wait(5)
        assert server.first_token_times() == {ids[1]: None, ids[2]: None}  # the first is in flight
        server.cancel_all()
        assert server.first_token_times() == {}
    finally:
        server.close()


def test_the_llamacpp_engine_tells_its_stream_requests_first_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimizer.backends.llamacpp import native
    from optimizer.backends.llamacpp.engine import LlamaCppEngine
    from optimizer.backends.llamacpp.settings import LlamaCppSettings

    class Context:
        def __init__(self, model: object, vocab: int, params: native.ContextParams) -> None:
            self.params, self.vocab = params, vocab

        def decode(
            self, tokens: list[int], positions: Any, sequences: Any, outputs: list[bool]
        ) -> np.ndarray:
            time.sleep(0.02)
            return np.zeros((sum(outputs), self.vocab), dtype=np.float32)

        def clear(self) -> None: ...
        def trim(self, sequence: int, keep: int = 0) -> None: ...
        def copy(self, source: int, target: int) -> None: ...
        def close(self) -> None: ...

    monkeypatch.setattr(native, "load_model", lambda path, gpu_layers: object())
    monkeypatch.setattr(native, "free_model", lambda model: None)
    monkeypatch.setattr(native, "n_vocab", lambda model: 16)
    monkeypatch.setattr(native, "Context", Context)
    engine = LlamaCppEngine(Path("fake.gguf"), LlamaCppSettings(), threads=1, sequences=1)
    try:
        engine.reserve(512)
        ids = [engine.submit([1, 2, 3], 300) for _ in range(2)]
        deadline = time.monotonic() + 10
        while (told := engine.first_token_times())[ids[0]] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = told[ids[0]]
        assert first is not None and first <= time.perf_counter() and told[ids[1]] is None
        engine.cancel_all()
        assert engine.first_token_times() == {}
    finally:
        engine.close()


def test_the_genai_server_tells_the_requests_waiting_for_genai() -> None:
    from optimizer.backends.ort_genai.serving import GenaiEngineServer

    class Caps:
        configured_max_batch_size, max_request_length, max_scheduled_tokens = 4, 0, 0

    class Request:
        cancelled = False

        def begin_turn(self, tokens: object, options: object) -> int:
            return 1

        def cancel_turn(self, turn: int) -> None:
            Request.cancelled = True

        def close(self) -> None:
            pass

    class Busy:  # genai computing: no token comes
        def __init__(self, model: object) -> None:
            pass

        def get_capabilities(self) -> Caps:
            return Caps()

        def create_event_buffer(self, capacity: int) -> list[object]:
            return []

        def create_request(self, options: object = None) -> Request:
            return Request()

        def has_pending_requests(self) -> bool:
            return not Request.cancelled

        def run(self, buffer: object) -> list[object]:
            time.sleep(0.01)
            return []

    class Options:
        def __init__(self, *args: object) -> None:
            pass

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return lambda *args: None

    class Og:
        Engine, RequestOptions, TurnOptions = Busy, Options, Options

    server = GenaiEngineServer(Og(), object(), 1)
    try:
        ids = [server.submit([1, 2, 3], 4) for _ in range(3)]
        deadline = time.monotonic() + 5
        while not server._handed and time.monotonic() < deadline:  # the first handed to genai
            time.sleep(0.01)
        # the one genai runs (no token yet) is told too, as those waiting for it
        assert server.first_token_times() == dict.fromkeys(ids)
        server.cancel_all()
        assert server.first_token_times() == {}
    finally:
        server.close()
