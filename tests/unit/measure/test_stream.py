"""Request streams: seeded generation matches its parameters; traces are read or rejected clearly."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from optimizer.config import LengthConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.stream import RequestStream, StreamRequest, TextTokens, generate_stream, read_trace

TEXT = list(range(1000, 1997))  # stand-in token ids of a text


def text(start: tuple[int, ...] = (1,)) -> TextTokens:
    return TextTokens(TEXT, start_ids=start, seed=3)


def stream_cfg(**values: object) -> WorkloadConfig:
    return WorkloadConfig(**({"kind": "serving", "warmup_requests": 0, "drain_requests": 0} | values))  # type: ignore[arg-type]


def test_a_seeded_stream_is_reproducible_and_its_hash_identifies_it() -> None:
    cfg = stream_cfg(requests=20, rate=4.0, seed=7)
    a, b = generate_stream(cfg, text()), generate_stream(cfg, text())
    assert a.requests == b.requests and a.sha256 == b.sha256
    other = generate_stream(stream_cfg(requests=20, rate=4.0, seed=8), text())
    assert other.sha256 != a.sha256
    assert [r.index for r in a.requests] == list(range(20))


def test_another_rate_scales_the_arrivals_and_keeps_the_requests() -> None:
    cfg = stream_cfg(requests=30, rate=2.0)
    slow, fast = generate_stream(cfg, text()), generate_stream(cfg, text(), rate=4.0)
    assert [r.prompt_ids for r in slow.requests] == [r.prompt_ids for r in fast.requests]
    for a, b in zip(slow.requests, fast.requests, strict=True):
        assert b.arrival_seconds == pytest.approx(a.arrival_seconds / 2)


@pytest.mark.parametrize("arrivals,cv", [("poisson", 1.0), ("constant", 1.0), ("gamma", 3.0)])
def test_arrival_rate_matches_the_rate(arrivals: str, cv: float) -> None:
    cfg = stream_cfg(requests=3000, rate=5.0, arrivals=arrivals, arrival_cv=cv, seed=1)
    stream = generate_stream(cfg, text())
    arrivals_s = [r.arrival_seconds for r in stream.requests]
    gaps = [b - a for a, b in zip(arrivals_s, arrivals_s[1:], strict=False)]
    assert stream.offered_rate == pytest.approx(5.0, rel=0.1)
    measured_cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    expected_cv = {"poisson": 1.0, "constant": 0.0, "gamma": 3.0}[arrivals]
    assert measured_cv == pytest.approx(expected_cv, abs=0.15 * max(expected_cv, 1))
    assert all(g >= 0 for g in gaps)


def test_lengths_follow_their_distributions_and_prompts_start_like_the_tokenizer() -> None:
    cfg = stream_cfg(
        requests=2000,
        prompt_lengths=LengthConfig("lognormal", 100, 10, 400, 0.5),
        output_lengths=LengthConfig("uniform", 50, 20, 80),
    )
    stream = generate_stream(cfg, text(start=(1,)))
    prompts = [len(r.prompt_ids) for r in stream.requests]
    outputs = [r.max_new_tokens for r in stream.requests]
    assert statistics.fmean(prompts) == pytest.approx(100, rel=0.08)
    assert min(prompts) >= 10 and max(prompts) <= 400
    assert statistics.fmean(outputs) == pytest.approx(50, rel=0.05)
    assert min(outputs) >= 20 and max(outputs) <= 80
    assert all(r.prompt_ids[0] == 1 for r in stream.requests)  # BOS first
    assert all(t in TEXT for r in stream.requests[:20] for t in r.prompt_ids[1:])  # real text after


def test_conversations_resend_their_history() -> None:
    cfg = stream_cfg(requests=12, turns=3, turn_gap_seconds=2.0, rate=1.0, shared_prefix_tokens=16)
    stream = generate_stream(cfg, text())
    by_conversation: dict[str, list] = {}
    for r in stream.requests:
        by_conversation.setdefault(str(r.conversation), []).append(r)
    assert len(by_conversation) == 4
    for turns in by_conversation.values():
        turns.sort(key=lambda r: r.turn)
        assert [r.turn for r in turns] == [0, 1, 2]
        for earlier, later in zip(turns, turns[1:], strict=False):
            assert later.prompt_ids[: len(earlier.prompt_ids)] == earlier.prompt_ids
            assert len(later.prompt_ids) > len(earlier.prompt_ids) + earlier.max_new_tokens
            assert later.arrival_seconds == pytest.approx(earlier.arrival_seconds + 2.0)
    prefixes = {r.prompt_ids[:16] for r in stream.requests}
    assert len(prefixes) == 1  # every request starts with the shared system prompt


@pytest.mark.parametrize(
    "values,field",
    [
        ({"rate": 0}, "workload.rate"),
        ({"rates": [1.0, -2.0]}, "workload.rates"),
        ({"arrivals": "weibull"}, "workload.arrivals"),
        ({"requests": 1}, "workload.requests"),
        ({"requests": 8, "warmup_requests": 4, "drain_requests": 4}, "workload.requests"),
        ({"prompt_lengths": LengthConfig("zipf")}, "workload.prompt_lengths.kind"),
        ({"output_lengths": LengthConfig("uniform", 10, 20, 5)}, "workload.output_lengths"),
        ({"output_lengths": LengthConfig("fixed", 600, 1, 512)}, "workload.output_lengths.mean"),
        ({"kind": "batch"}, "workload.kind"),
    ],
)
def test_bad_stream_parameters_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(UserError) as error:
        stream_cfg(**values)
    assert error.value.field == field


class WordTokenizer:
    """Each word is one token id (its length + 100): enough to check the reader's plumbing."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def test_a_trace_gives_text_or_counted_prompts(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "t.jsonl",
        [
            {"arrival": 0.0, "prompt": "hello big world", "output_tokens": 5, "conversation": "a", "turn": 0},
            {"arrival": 0.5, "prompt_tokens": 12, "output_tokens": 3},
            "",
            {"arrival": 0.5, "prompt_tokens": 4, "output_tokens": 1},
        ],
    )
    stream = read_trace(trace, WordTokenizer(), text(start=(1,)))
    first, second, third = stream.requests
    assert first.prompt_ids == (1, 105, 103, 105) and first.max_new_tokens == 5
    assert first.conversation == "a" and first.turn == 0
    assert len(second.prompt_ids) == 12 and second.prompt_ids[0] == 1
    assert [r.arrival_seconds for r in stream.requests] == [0.0, 0.5, 0.5]
    assert stream.source == "trace t.jsonl"
    assert stream.longest_request_tokens == 12 + 3  # the second line, not the first or last


@pytest.mark.parametrize(
    "row,needle",
    [
        ({"prompt": "x", "output_tokens": 2}, "missing 'arrival'"),
        ({"arrival": 0, "prompt": "x"}, "missing 'output_tokens'"),
        ({"arrival": -1, "prompt": "x", "output_tokens": 2}, "negative or earlier"),
        ({"arrival": 0, "output_tokens": 2}, "neither 'prompt'"),
        ({"arrival": "soon", "prompt": "x", "output_tokens": 2}, "not a number"),
        ({"arrival": 0, "prompt_tokens": 4000, "output_tokens": 200}, "exceed the model's context"),
        ("{not json", "is not JSON"),
    ],
)
def test_bad_trace_lines_are_one_clear_error(tmp_path: Path, row: object, needle: str) -> None:
    trace = write(tmp_path / "bad.jsonl", [{"arrival": 0.0, "prompt": "ok", "output_tokens": 1}, row])
    with pytest.raises(UserError) as error:
        read_trace(trace, WordTokenizer(), text(), max_context=2048)
    assert needle in error.value.problem or needle in str(error.value)
    assert error.value.field.startswith("workload.trace line 2")


def test_an_empty_prompt_is_an_error_without_a_start_token(tmp_path: Path) -> None:
    """Without a start token (Qwen, GPT-2 style) an empty prompt is no token at all: an engine
    would fail on it mid-run. With one, the prompt is that token, as for the model's own chat."""
    trace = write(tmp_path / "t.jsonl", [{"arrival": 0.0, "prompt": " ", "output_tokens": 2}])
    with pytest.raises(UserError) as error:
        read_trace(trace, WordTokenizer(), text(start=()))
    assert error.value.field == "workload.trace line 1: prompt" and "empty" in error.value.problem
    assert read_trace(trace, WordTokenizer(), text(start=(1,))).requests[0].prompt_ids == (1,)


def test_decreasing_arrivals_and_missing_files_are_errors(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "t.jsonl",
        [
            {"arrival": 1.0, "prompt": "a", "output_tokens": 1},
            {"arrival": 0.5, "prompt": "b", "output_tokens": 1},
        ],
    )
    with pytest.raises(UserError, match="earlier than the line before"):
        read_trace(trace, WordTokenizer(), text())
    with pytest.raises(UserError, match="does not exist"):
        read_trace(tmp_path / "missing.jsonl", WordTokenizer(), text())


def test_a_trace_on_an_offline_workload_is_refused_not_ignored() -> None:
    with pytest.raises(UserError) as error:
        WorkloadConfig(kind="offline", trace="requests.jsonl")
    assert error.value.field == "workload.trace" and "kind=offline" in error.value.problem
    assert WorkloadConfig(kind="serving", trace="requests.jsonl").trace == "requests.jsonl"


def test_a_trace_too_short_for_a_steady_state_is_refused() -> None:
    from optimizer.measure.setup import _check_steady_state

    cfg = WorkloadConfig(kind="serving", trace="t.jsonl", warmup_requests=4, drain_requests=4)
    with pytest.raises(UserError) as error:
        _check_steady_state(trace_of([0.1 * i for i in range(9)]), cfg)  # 4 + 4 + 1: no span
    assert error.value.field == "workload.trace" and "has 9 requests" in error.value.problem
    _check_steady_state(trace_of([0.1 * i for i in range(10)]), cfg)


def test_a_trace_whose_window_requests_arrive_at_once_is_refused() -> None:
    """A burst from the window's first request to its last: the energy window, opened and closed at
    those arrivals, would last no time and count no token."""
    from optimizer.measure.setup import _check_steady_state

    cfg = WorkloadConfig(kind="serving", trace="t.jsonl", warmup_requests=2, drain_requests=2)
    with pytest.raises(UserError) as error:
        _check_steady_state(trace_of([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0]), cfg)
    assert error.value.field == "workload.trace" and "requests 2 to 4" in error.value.problem
    _check_steady_state(trace_of([0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5]), cfg)  # bursts elsewhere are fine


def trace_of(arrivals: list[float]) -> RequestStream:
    return RequestStream(
        tuple(StreamRequest(i, t, (1, 2), 2) for i, t in enumerate(arrivals)), "trace t.jsonl"
    )


def test_a_trace_is_keyed_at_its_own_offered_rate_and_a_generated_stream_at_workload_rate(
    tmp_path: Path,
) -> None:
    """A trace is replayed at its own times: selected (and recorded) at its own rate, to 6
    significant digits, whatever workload.rate says."""
    from optimizer.measure import setup

    rows = [{"arrival": 0.1 * i, "prompt_tokens": 8, "output_tokens": 2} for i in range(13)]  # 10 req/s
    cfg = stream_cfg(trace=str(write(tmp_path / "t.jsonl", rows)), rate=2.0)
    paragraphs = ["word " * 70_000]
    streams = setup._streams(cfg, WordTokenizer(), paragraphs, None)
    assert list(streams) == [10.0] and setup.selection_rate(cfg, streams) == 10.0
    generated = stream_cfg(rate=2.0, rates=[1.0, 4.0])
    streams = setup._streams(generated, WordTokenizer(), paragraphs, None)
    assert list(streams) == [1.0, 2.0, 4.0] and setup.selection_rate(generated, streams) == 2.0


def test_every_offered_load_gets_the_same_prompts_and_the_selection_stream_ignores_rates() -> None:
    """The load curve measures the same requests at scaled arrivals, and the stream at
    workload.rate (its hash keys the results and the recipe) does not depend on which other rates
    are listed. One text cursor shared across rates gave each rate other text."""
    from optimizer.measure import setup

    paragraphs = [" ".join(f"w{i}" for i in range(70_000))]
    alone = setup._streams(stream_cfg(rate=2.0), WordTokenizer(), paragraphs, None)[2.0]
    curve = setup._streams(stream_cfg(rate=2.0, rates=[0.5, 1.0]), WordTokenizer(), paragraphs, None)
    assert curve[2.0].sha256 == alone.sha256
    prompts = {rate: [r.prompt_ids for r in stream.requests] for rate, stream in curve.items()}
    assert prompts[0.5] == prompts[1.0] == prompts[2.0]
