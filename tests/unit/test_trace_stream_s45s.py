"""A trace's stream: its hash computed once, its store key free of the workload fields a trace
ignores, and a replay hours long (arrivals in milliseconds) warned of."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from optimizer.config import compose_run_config
from optimizer.measure import stream as stream_module
from optimizer.measure.stream import RequestStream, StreamRequest, TextTokens, read_trace
from optimizer.search import plan
from optimizer.store import context_key

TEXT = "cd" * 32
TRACE_SHA = "ab" * 32


def small_stream() -> RequestStream:
    requests = tuple(
        StreamRequest(i, i * 0.25, (1, 2, 3 + i), 8, "c" if i % 2 else None, i if i % 2 else None)
        for i in range(5)
    )
    return RequestStream(requests, "trace t.jsonl")


def uncached_sha256(stream: RequestStream) -> str:
    """The hash as computed before it was cached: every stored stream key was made this way."""
    digest = hashlib.sha256()
    for r in stream.requests:
        row = [round(r.arrival_seconds, 6), list(r.prompt_ids), r.max_new_tokens, r.conversation, r.turn]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def test_a_streams_hash_is_its_uncached_value_and_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = small_stream()
    expected = uncached_sha256(stream)
    calls = []
    real = stream_module.hashlib.sha256

    def counting(*args: bytes) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(stream_module.hashlib, "sha256", counting)
    assert stream.sha256 == expected
    assert stream.sha256 == expected
    assert len(calls) == 1  # a 100k-request trace took seconds per access, once per measurement
    assert stream == small_stream()  # the cached hash is no field: equality is the requests'


def trace_key(*overrides: str, trace: bool = True) -> str:
    given = ["workload=chat", *(["workload.trace=t.jsonl"] if trace else []), *overrides]
    cfg = compose_run_config(given)
    return context_key({"protocol": plan.protocol(cfg, TEXT, "estimate", TRACE_SHA)})


@pytest.mark.parametrize(
    "override",
    [
        "workload.requests=100",
        "workload.turns=3",
        "workload.shared_prefix_tokens=32",
        "workload.prompt_lengths.max=256",
        "workload.output_lengths.mean=32",
        "workload.arrivals=constant",
    ],
)
def test_a_trace_is_keyed_without_the_fields_it_ignores(override: str) -> None:
    """The same trace with workload.requests=100 measured every candidate again."""
    assert trace_key(override) == trace_key()
    assert trace_key(override, trace=False) != trace_key(trace=False)  # a generated stream reads them


def test_a_trace_is_keyed_alike_under_another_serving_preset() -> None:
    """agent's stream fields (turns, shared prefix, lengths) differ from chat's; its SLO too, and
    the SLO stays in the key (it is what a measurement is judged by): given alike here."""

    def preset_key(preset: str) -> str:
        cfg = compose_run_config(
            [f"workload={preset}", "workload.trace=t.jsonl", "workload.slo.ttft_ms=2000"]
        )
        return context_key({"protocol": plan.protocol(cfg, TEXT, "estimate", TRACE_SHA)})

    assert preset_key("agent") == preset_key("chat")


def write_trace(path: Path, arrivals: list[float]) -> Path:
    rows = [{"arrival": a, "prompt_tokens": 4, "output_tokens": 2} for a in arrivals]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path) -> RequestStream:
    return read_trace(path, None, TextTokens(list(range(100, 200)), (1,)), 2048)


def test_a_trace_hours_long_is_warned_of_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Arrivals in milliseconds (0, 350, 700, ...) read as seconds: a replay of hours passed every check."""
    path = write_trace(tmp_path / "ms.jsonl", [i * 350.0 for i in range(40)])
    with caplog.at_level(logging.WARNING, logger="optimizer.measure.stream"):
        read(path)
        read(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "workload.trace" in warnings[0] and "13650 s" in warnings[0] and "millisecond" in warnings[0]


def test_a_trace_minutes_long_is_not_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_trace(tmp_path / "s.jsonl", [i * 0.35 for i in range(40)])
    with caplog.at_level(logging.WARNING, logger="optimizer.measure.stream"):
        read(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
