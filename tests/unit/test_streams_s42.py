"""Request streams: a lognormal length with cv 0 is its mean; a trace's templated prompt gets one BOS."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from optimizer.config import LengthConfig, WorkloadConfig
from optimizer.measure.stream import TextTokens, draw_length, generate_stream, read_trace

TEXT = list(range(1000, 1997))  # stand-in token ids of a text
BOS = 1


def stream_cfg(**values: object) -> WorkloadConfig:
    return WorkloadConfig(**({"kind": "serving", "warmup_requests": 0, "drain_requests": 0} | values))  # type: ignore[arg-type]


def test_a_lognormal_length_with_no_spread_is_its_mean() -> None:
    """exp(log(mean)) falls just short of 64, 128, 256...: int() made every draw mean - 1."""
    wrong = [
        mean
        for mean in range(1, 2049)
        if draw_length(LengthConfig("lognormal", mean, 1, 4096, 0.0), random.Random(0)) != mean
    ]
    assert wrong == []
    cfg = stream_cfg(
        requests=10,
        prompt_lengths=LengthConfig("lognormal", 128, 16, 512, 0.0),
        output_lengths=LengthConfig("lognormal", 64, 8, 256, 0.0),
    )
    stream = generate_stream(cfg, TextTokens(TEXT, (BOS,), seed=0))
    assert {len(r.prompt_ids) for r in stream.requests} == {128}
    assert {r.max_new_tokens for r in stream.requests} == {64}


def test_a_lognormal_length_with_no_spread_leaves_the_other_draws_as_they_were() -> None:
    """The cv-0 draw still takes its random numbers: output lengths (and so the stream's hash, where
    the prompt length was right already) do not depend on which mean the prompts have."""

    def outputs(prompt_mean: int) -> list[int]:
        cfg = stream_cfg(requests=40, prompt_lengths=LengthConfig("lognormal", prompt_mean, 16, 512, 0.0))
        return [r.max_new_tokens for r in generate_stream(cfg, TextTokens(TEXT, (BOS,), seed=0)).requests]

    assert outputs(128) == outputs(100)
    assert len(set(outputs(128))) > 1  # the outputs' own spread still drawn


class BosTokenizer:
    """Each word is one token id (its length + 100); "<s>" is the BOS, read as such in text as a
    Hugging Face tokenizer reads a special token's text even with add_special_tokens=False."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [BOS if word == "<s>" else 100 + len(word) for word in text.replace("<s>", " <s> ").split()]
        return {"input_ids": ([BOS] if add_special_tokens else []) + ids}


def trace_of(tmp_path: Path, prompts: list[str]) -> Path:
    path = tmp_path / "t.jsonl"
    rows = [{"arrival": 0.5 * i, "prompt": p, "output_tokens": 4} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_trace_prompt_rendered_with_its_bos_gets_one_sequence_start(tmp_path: Path) -> None:
    """Llama 2's chat template renders "<s>[INST] ...": the reader put the tokenizer's BOS before
    the BOS the text already starts with."""
    trace = trace_of(tmp_path, ["<s>[INST] hello world [/INST]", "how are you", "a <s> inside"])
    stream = read_trace(trace, BosTokenizer(), TextTokens(TEXT, (BOS,)))
    templated, plain, inside = (r.prompt_ids for r in stream.requests)
    assert templated == (BOS, 106, 105, 105, 107)
    assert plain == (BOS, 103, 103, 103)  # the start is still put before text without one
    assert inside == (BOS, 101, BOS, 106)  # only a leading BOS is the sequence's start


@pytest.mark.parametrize("start", [(), (BOS,)])
def test_a_trace_prompt_of_only_the_bos_text_is_one_token(tmp_path: Path, start: tuple[int, ...]) -> None:
    stream = read_trace(trace_of(tmp_path, ["<s>"]), BosTokenizer(), TextTokens(TEXT, start))
    assert stream.requests[0].prompt_ids == (BOS,)
