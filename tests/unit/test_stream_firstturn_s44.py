"""A conversation's first turn is its system prompt and then a message drawn like every later
turn's: a length that counted the system prompt left workload=agent's first turns (256-token
prefix, messages of at most 256 tokens) one token past it."""

from __future__ import annotations

import statistics

from optimizer.config import LengthConfig, WorkloadConfig, compose_run_config
from optimizer.measure.stream import TextTokens, generate_stream

TEXT = list(range(1000, 60000))  # stand-in token ids of a text
BOS = 1


def test_the_agent_presets_first_turns_carry_a_message_after_the_system_prompt() -> None:
    cfg = compose_run_config(["workload=agent", "workload.requests=2000"]).workload
    prefix, mean = cfg.shared_prefix_tokens, cfg.prompt_lengths.mean
    stream = generate_stream(cfg, TextTokens(TEXT, (BOS,), seed=0))
    system = stream.requests[0].prompt_ids[:prefix]
    firsts = [r for r in stream.requests if r.turn == 0]
    assert all(r.prompt_ids[:prefix] == system for r in firsts)
    messages = [len(r.prompt_ids) - prefix for r in firsts]
    # before: every first-turn message was 1 token (the drawn length, <= 256, was within the prefix)
    assert statistics.fmean(messages) > 0.9 * mean
    assert len(set(messages)) > 10


def test_a_first_turns_length_counts_the_sequence_start_as_a_prompt_without_a_system_prompt_does() -> None:
    lengths = LengthConfig("fixed", 40, 1, 100)
    plain = WorkloadConfig(
        kind="serving", requests=6, prompt_lengths=lengths, warmup_requests=0, drain_requests=0
    )
    system = WorkloadConfig(
        kind="serving",
        requests=6,
        prompt_lengths=lengths,
        shared_prefix_tokens=300,
        warmup_requests=0,
        drain_requests=0,
    )
    assert {len(r.prompt_ids) for r in generate_stream(plain, TextTokens(TEXT, (BOS,))).requests} == {40}
    # 300 (BOS and the system prompt) then a 40-token prompt's 39 tokens of text
    assert {len(r.prompt_ids) for r in generate_stream(system, TextTokens(TEXT, (BOS,))).requests} == {339}


def test_the_longest_request_bound_holds_every_request_of_a_conversation_stream() -> None:
    cfg = compose_run_config(["workload=agent", "workload.requests=400"]).workload
    stream = generate_stream(cfg, TextTokens(TEXT, (BOS,), seed=0))
    assert stream.longest_request_tokens <= cfg.longest_request_tokens()
