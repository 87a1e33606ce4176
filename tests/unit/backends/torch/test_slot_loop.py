"""loop=slots on the CPU: the slot decoder's steps (eager and compiled) and the engine's admission,
against HF greedy decoding of each request alone."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import torch

from optimizer.backends.torch import decode_attention
from optimizer.backends.torch.slot_decoder import SlotDecoder, key_spans, step_sizes
from optimizer.backends.torch.slot_server import SlotEngine

VOCAB = 300


def tiny_llama(attention: str = "sdpa", layers: int = 2) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    if attention == decode_attention.NAME:
        decode_attention.register()
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attention).eval()


def compiled_graphs(function: Any) -> int:
    """The graphs dynamo holds for `function`'s code (each compile of it, whatever the instance)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(function.__code__))


def prompts(*lengths: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_gqa", "eager"])
def test_requests_admitted_between_steps_decode_as_each_would_alone(attention: str) -> None:
    """Two requests start together, a third joins three steps later into the free slot, and a
    fourth reuses a slot whose region still holds a longer request's keys."""
    model = tiny_llama(attention)
    p = prompts(5, 17, 9, 30)
    decoder = SlotDecoder(model, 3, 64, torch.device("cpu"))
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    with torch.no_grad():
        first = decoder.prefill([0, 2], [p[1], p[0]]).tolist()
        got[0].append(first[0])
        got[2].append(first[1])
        for _ in range(3):
            decoder.step()
            for slot in (0, 2):
                got[slot].append(int(decoder.tokens[slot]))
        got[1].append(int(decoder.prefill([1], [p[2]])[0]))
        for _ in range(4):
            decoder.step()
            for slot in range(3):
                got[slot].append(int(decoder.tokens[slot]))
        reused = [int(decoder.prefill([0], [p[3]])[0])]
        for _ in range(5):
            decoder.step()
            reused.append(int(decoder.tokens[0]))
    assert got[0] == greedy(model, p[1], 8)
    assert got[2] == greedy(model, p[0], 8)
    assert got[1] == greedy(model, p[2], 5)
    assert reused == greedy(model, p[3], 6)


def test_an_idle_slot_keeps_its_position_inside_its_region() -> None:
    """Slots without a request step too: their positions stop at the last column (on CUDA an
    index past it is a device-side assert that fails every later candidate)."""
    decoder = SlotDecoder(tiny_llama(), 2, 8, torch.device("cpu"))
    with torch.no_grad():
        for _ in range(12):
            decoder.step()
    assert decoder.cache.positions.tolist() == [8, 8]
    assert decoder.max_len == 9


def test_a_prompt_that_leaves_no_room_to_answer_is_refused() -> None:
    decoder = SlotDecoder(tiny_llama(), 1, 16, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"prompts of 1\.\.15 tokens"):
        decoder.prefill([0], prompts(16))


def test_models_whose_logits_are_not_the_head_of_the_hidden_state_are_refused() -> None:
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        SlotDecoder(model, 1, 16, torch.device("cpu"))


def test_a_compiled_step_keeps_greedy_tokens() -> None:
    """compiled=True runs the step through inductor (what is captured on a GPU): one graph for
    every step, whatever the slots' positions."""
    torch._dynamo.reset()
    model = tiny_llama("sdpa_gqa")
    p = prompts(6, 11, seed=1)
    decoder = SlotDecoder(model, 2, 32, torch.device("cpu"), compiled=True)
    got: list[list[int]] = [[], []]
    with torch.no_grad():
        got[0].append(int(decoder.prefill([0], [p[0]])[0]))
        decoder.step()
        got[0].append(int(decoder.tokens[0]))
        got[1].append(int(decoder.prefill([1], [p[1]])[0]))
        for _ in range(4):
            decoder.step()
            for slot in (0, 1):
                got[slot].append(int(decoder.tokens[slot]))
    assert got[0] == greedy(model, p[0], 6)
    assert got[1] == greedy(model, p[1], 5)
    assert compiled_graphs(SlotDecoder._decode) == 1
    assert compiled_graphs(SlotDecoder._prefill) == 1  # one-row prefills of 6 and 11 tokens


def decode_with_spans(decoder: SlotDecoder, model: Any, p: list[list[int]], new: int) -> list[list[int]]:
    """Slot 0 decodes p[0] alone, then slot 1 joins with p[1]; every step attends only to the
    span the longer of them has reached (run_step, as the engine calls it)."""
    got: list[list[int]] = [[], []]
    with torch.no_grad():
        got[0].append(int(decoder.prefill([0], [p[0]])[0]))
        for _ in range(3):
            decoder.run_step(1, len(p[0]) + len(got[0]))
            got[0].append(int(decoder.tokens[0]))
        got[1].append(int(decoder.prefill([1], [p[1]])[0]))
        while len(got[1]) < new:
            decoder.run_step(2, max(len(p[i]) + len(got[i]) for i in (0, 1)))
            for slot in (0, 1):
                got[slot].append(int(decoder.tokens[slot]))
    return got


def test_a_step_attends_only_to_the_span_its_longest_request_reached() -> None:
    """Spans of 8 columns for requests of up to 32 tokens: the requests cross several spans (and
    the idle slot 2, past them all at the region's spare column 32, writes there unseen) and still
    decode as alone; more columns than any request reaches are refused."""
    model = tiny_llama()
    p = prompts(6, 3, seed=4)
    decoder = SlotDecoder(model, 3, 32, torch.device("cpu"), key_span_step=8)
    assert decoder.spans == [8, 16, 24, 32]
    with torch.no_grad():
        for _ in range(40):  # slot 2 (never given a request) ends pinned at column 32
            decoder.step()
    spans_run: list[int] = []
    step = decoder.step

    def counted(rows: int | None = None, span: int | None = None) -> None:
        spans_run.append(span or decoder.max_len)
        step(rows, span)

    decoder.step = counted  # type: ignore[method-assign]
    got = decode_with_spans(decoder, model, p, 14)
    assert got[0] == greedy(model, p[0], 17)
    assert got[1] == greedy(model, p[1], 14)
    assert spans_run[0] == 8 and spans_run[-1] == 24 and 16 in spans_run
    with pytest.raises(ValueError, match=r"1\.\.32 key columns"):
        decoder.span_for(33)


def test_a_compiled_step_is_one_graph_for_every_size_and_span() -> None:
    """Compiled first where a GPU's capture starts (all 10 slots, the longest span), then 10
    slots step at 8 rows (slot 0 alone, then slots 0-1) and at 10 after eight more requests
    join; the spans go 8, 16, 24: one compile."""
    torch._dynamo.reset()
    model = tiny_llama("sdpa_gqa")
    p = prompts(7, 4, *range(3, 11), seed=5)
    decoder = SlotDecoder(model, 10, 32, torch.device("cpu"), compiled=True, key_span_step=8)
    assert decoder.sizes == [8, 10]
    with torch.no_grad():
        decoder.step()  # no request yet: the idle slots' writes are overwritten by prefills
    got = decode_with_spans(decoder, model, p, 12)
    assert got[0] == greedy(model, p[0], 15)
    assert got[1] == greedy(model, p[1], 12)
    rest = list(range(2, 10))
    with torch.no_grad():
        later = [[int(t)] for t in decoder.prefill(rest, p[2:])]
        for _ in range(2):
            decoder.run_step(10, 24)
            for answer, slot in zip(later, rest, strict=True):
                answer.append(int(decoder.tokens[slot]))
    for answer, prompt in zip(later, p[2:], strict=True):
        assert answer == greedy(model, prompt, 3)
    assert compiled_graphs(SlotDecoder._decode) == 1


def test_compiled_prefills_are_compiled_before_any_request_and_once_per_kind() -> None:
    """compile_prefills (the engine's build) compiles a one-row and a many-row prefill, each with
    and without a copied prefix; admissions of other row counts, widths and spans then compile
    nothing more, and decode as HF greedy."""
    torch._dynamo.reset()
    model = tiny_llama("sdpa_gqa")
    decoder = SlotDecoder(model, 4, 96, torch.device("cpu"), compiled=True, stored=4)
    with torch.no_grad():
        decoder.compile_prefills()
        assert compiled_graphs(SlotDecoder._prefill) == 4
        assert int(decoder.cache.positions.abs().sum()) == 0  # the warm-up leaves every slot free
        p = prompts(40, 30, 25, 50, 3, seed=1)
        firsts = decoder.prefill([0, 1, 2], p[:3]).tolist()  # 3 rows, width 48
        decoder.cache.copy_columns(0, 4, 40)  # slot 0's K/V into the store
        shared = p[0][:35] + p[3]
        decoder.cache.copy_columns(4, 3, 35)
        firsts += decoder.prefill([3], [shared], [35]).tolist()  # width 64: span 35 + 64, cut to 96
        decoder.cache.copy_columns(4, 0, 20)
        decoder.cache.copy_columns(4, 1, 30)
        both = [p[0][:20] + p[4], p[0][:30] + p[2]]
        firsts += decoder.prefill([0, 1], both, [20, 30]).tolist()
    assert compiled_graphs(SlotDecoder._prefill) == 4
    assert firsts == [greedy(model, q, 1)[0] for q in (*p[:3], shared, *both)]


def test_each_decoder_shape_compiles_past_dynamos_default_limit() -> None:
    """Each slot shape of a search process adds its own graphs: with dynamo's limit at 1 here (8
    by default), a second shape still compiles, not silently eager."""
    torch._dynamo.reset()
    model = tiny_llama("sdpa_gqa")
    p = prompts(6, seed=2)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        for slots in (2, 3):
            decoder = SlotDecoder(model, slots, 32, torch.device("cpu"), compiled=True)
            assert int(decoder.prefill([0], p)[0]) == greedy(model, p[0], 1)[0]
    assert compiled_graphs(SlotDecoder._prefill) == 2


def test_key_spans_are_multiples_of_the_step_up_to_the_longest_request() -> None:
    assert key_spans(2560, 256) == [256 * k for k in range(1, 11)]
    assert key_spans(700, 256) == [256, 512, 700]
    assert key_spans(200, 256) == [200]
    assert key_spans(768, 0) == [768]
    whole = SlotDecoder(tiny_llama(), 1, 32, torch.device("cpu"), key_span_step=0)
    assert whole.spans == [33]  # spans off: every step attends to the whole region, as before


@pytest.fixture
def engine() -> Any:
    model = tiny_llama()
    engine = SlotEngine(model, 2, "cpu", max_prefill_tokens=32)
    yield engine
    engine.close()


def test_generate_gives_each_rows_greedy_tokens_and_its_latencies(engine: SlotEngine) -> None:
    rows = prompts(7, 7, 7, seed=2)  # three requests for two slots: the third waits for one
    generation = engine.generate(torch.tensor(rows), 5)
    assert generation.token_ids is not None
    assert generation.token_ids.tolist() == [greedy(engine.model, r, 5) for r in rows]
    assert generation.request_latencies is not None and len(generation.request_latencies) == 3
    # the third request waited for a slot: its first token came after the others' first tokens
    ttfts = [ttft for ttft, _ in generation.request_latencies]
    assert ttfts[2] > max(ttfts[:2])
    assert generation.ttft_seconds == max(ttfts)


def test_a_stream_of_mixed_requests_completes_each_as_alone(engine: SlotEngine) -> None:
    """Requests of different prompt and answer lengths arrive while others decode, one of them
    longer than the slots were first sized for (the region grows once the slots drain)."""
    asked = [(p, n) for p, n in zip(prompts(4, 20, 9, 200, 13, seed=3), (6, 1, 9, 80, 3), strict=True)]
    ids: dict[str, tuple[list[int], int]] = {}
    for prompt, new in asked:
        ids[engine.submit(prompt, new)] = (prompt, new)
        time.sleep(0.01)
    done = {}
    deadline = time.monotonic() + 120
    while len(done) < len(asked) and time.monotonic() < deadline:
        done.update({c.request_id: c for c in engine.collect(1.0)})
    assert engine.decoder is not None and engine.decoder.max_sequence_tokens == 512
    for request_id, (prompt, new) in ids.items():
        completion = done[request_id]
        assert completion.error is None
        assert list(completion.token_ids) == greedy(engine.model, prompt, new)
        assert len(completion.token_times) == new
        assert list(completion.token_times) == sorted(completion.token_times)


def test_cancel_all_drops_unfinished_requests_and_the_engine_serves_again(engine: SlotEngine) -> None:
    for prompt in prompts(5, 6, 7, 8):
        engine.submit(prompt, 200)
    time.sleep(0.05)
    engine.cancel_all()
    assert engine.collect(0.2) == []
    prompt = prompts(5, seed=4)[0]
    request_id = engine.submit(prompt, 4)
    completions = engine.collect(30.0)
    assert [c.request_id for c in completions] == [request_id]
    assert list(completions[0].token_ids) == greedy(engine.model, prompt, 4)


def test_a_failed_step_fails_its_requests_not_the_engine(
    engine: SlotEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.reserve(64)
    assert engine.decoder is not None
    broken = threading.Event()

    def fail_once(busy: int, columns: int | None = None) -> None:
        broken.set()
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.decoder, "run_step", fail_once)
    request_id = engine.submit(prompts(5)[0], 3)
    completions = engine.collect(30.0)
    assert broken.is_set()
    assert [(c.request_id, c.error) for c in completions] == [(request_id, "RuntimeError: device lost")]
    monkeypatch.undo()
    prompt = prompts(6, seed=5)[0]
    engine.submit(prompt, 3)
    assert list(engine.collect(30.0)[0].token_ids) == greedy(engine.model, prompt, 3)


def test_score_is_the_models_forward(engine: SlotEngine) -> None:
    ids = torch.tensor(prompts(9, seed=6))
    with torch.no_grad():
        want = engine.model(input_ids=ids).logits.float()
    torch.testing.assert_close(engine.score(ids), want)


def test_nothing_is_built_before_a_size_is_asked_for() -> None:
    """On a GPU a build compiles and captures: one at the default size, then another at the
    stream's reserved size, would spend device time on a decoder never used."""
    engine = SlotEngine(tiny_llama(), 2, "cpu")
    try:
        time.sleep(0.2)
        assert engine.decoder is None
        engine.reserve(300)
        assert engine.decoder is not None and engine.decoder.max_sequence_tokens == 512
    finally:
        engine.close()


def test_a_compiled_engine_serves_from_its_loop_thread() -> None:
    """The GPU candidate's path short of the capture: the step compiles on the loop thread, and
    the build compiles the prefills (one row, two) before the first request is admitted."""
    torch._dynamo.reset()
    model = tiny_llama("sdpa_gqa")
    engine = SlotEngine(model, 2, "cpu", compiled=True)
    try:
        engine.reserve(64)
        assert compiled_graphs(SlotDecoder._prefill) == 2
        rows = prompts(8, 8, seed=7)
        generation = engine.generate(torch.tensor(rows), 4)
        assert generation.token_ids is not None
        assert generation.token_ids.tolist() == [greedy(model, r, 4) for r in rows]
        assert compiled_graphs(SlotDecoder._prefill) == 2
    finally:
        engine.close()


def test_step_sizes_are_powers_of_two_from_eight_and_all_slots() -> None:
    assert step_sizes(64) == [8, 16, 32, 64]
    assert step_sizes(100) == [8, 16, 32, 64, 100]
    assert step_sizes(10) == [8, 10]
    assert step_sizes(2) == [2]


def test_busy_slots_stay_at_the_front_and_a_step_runs_only_the_rows_they_need() -> None:
    """16 slots, 3 requests: every step runs 8 rows, and a request that finishes first hands its
    slot to the last busy one (moved with its cache), which still decodes as alone."""
    model = tiny_llama()
    engine = SlotEngine(model, 16, "cpu")
    try:
        engine.reserve(64)
        decoder = engine.decoder
        assert decoder is not None and decoder.sizes == [8, 16]
        rows_run: list[int] = []
        spans_run: list[int] = []
        step = decoder.step

        def counted(rows: int | None = None, span: int | None = None) -> None:
            rows_run.append(rows or decoder.slots)
            spans_run.append(span or decoder.max_len)
            step(rows, span)

        decoder.step = counted  # type: ignore[method-assign]
        asked = list(zip(prompts(6, 13, 9, seed=8), (2, 12, 7), strict=True))
        ids = [engine.submit(prompt, new) for prompt, new in asked]
        done: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while len(done) < len(ids) and time.monotonic() < deadline:
            done.update({c.request_id: c for c in engine.collect(1.0)})
        assert rows_run and set(rows_run) == {8}
        assert set(spans_run) == {64}  # of a 257-column region: the requests reach 25 columns
        for request_id, (prompt, new) in zip(ids, asked, strict=True):
            assert list(done[request_id].token_ids) == greedy(model, prompt, new)
    finally:
        engine.close()


def test_moving_a_slot_carries_its_request() -> None:
    model = tiny_llama()
    p = prompts(7, 12, seed=9)
    decoder = SlotDecoder(model, 3, 64, torch.device("cpu"))
    got: list[int] = []
    with torch.no_grad():
        got.append(int(decoder.prefill([2], [p[0]])[0]))
        decoder.step()
        got.append(int(decoder.tokens[2]))
        decoder.move(2, 0)
        decoder.prefill([2], [p[1]])  # the old slot is reused at once
        for _ in range(3):
            decoder.step(1)
            got.append(int(decoder.tokens[0]))
    assert got == greedy(model, p[0], 5)


def test_a_dead_loop_thread_fails_its_requests_and_refuses_new_ones(
    engine: SlotEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything the loop raises outside a step (here: admission) ends the engine with the reason,
    instead of leaving the caller to wait for requests nobody serves."""
    engine.reserve(64)

    def broken_admit() -> list:
        raise KeyError("slot table")

    monkeypatch.setattr(engine, "_admit", broken_admit)
    request_id = engine.submit(prompts(5)[0], 3)
    completions = engine.collect(30.0)
    assert [c.request_id for c in completions] == [request_id]
    assert "loop thread stopped: KeyError" in str(completions[0].error)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(prompts(5)[0], 3)
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(torch.tensor(prompts(5)), 2)


def test_a_paced_loop_steps_no_more_often_than_its_interval_and_admits_meanwhile() -> None:
    """step_interval_seconds: steps start at least an interval apart; a request arriving during a
    wait joins the next step instead of waiting for the running one to finish."""
    model = tiny_llama()
    engine = SlotEngine(model, 4, "cpu", step_interval_seconds=0.05)
    try:
        engine.reserve(64)
        decoder = engine.decoder
        assert decoder is not None
        starts: list[float] = []
        step = decoder.step

        def stamped(rows: int | None = None, span: int | None = None) -> None:
            starts.append(time.perf_counter())
            step(rows, span)

        decoder.step = stamped  # type: ignore[method-assign]
        first, second = prompts(6, 9, seed=10)
        a = engine.submit(first, 8)
        time.sleep(0.12)
        b = engine.submit(second, 3)
        done: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while len(done) < 2 and time.monotonic() < deadline:
            done.update({c.request_id: c for c in engine.collect(1.0)})
        assert len(starts) == 7  # a's 8 tokens: one from its prefill, 7 steps (b's ran in them)
        assert min(t1 - t0 for t0, t1 in itertools.pairwise(starts)) >= 0.049
        assert done[b].token_times[-1] < done[a].token_times[-1]  # b ran beside a, not after it
        assert list(done[a].token_ids) == greedy(model, first, 8)
        assert list(done[b].token_ids) == greedy(model, second, 3)
    finally:
        engine.close()
