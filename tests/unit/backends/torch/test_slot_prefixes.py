"""Prefix reuse in the slot loop: the host table of what each cache row holds, a prefill that
starts after a copied prefix, and the engine serving conversations, against HF greedy decoding."""

from __future__ import annotations

import time
from contextlib import closing

import pytest
import torch

from optimizer.backends.torch.slot_decoder import SlotDecoder
from optimizer.backends.torch.slot_prefixes import PREFIX_MIN_TOKENS, CachedPrefixes
from optimizer.backends.torch.slot_server import SlotEngine
from unit.backends.torch.test_slot_loop import greedy, prompts, tiny_llama


def test_a_prompt_matches_the_row_sharing_its_longest_prefix_leaving_its_last_token() -> None:
    table = CachedPrefixes(slots=2, entries=2, columns=64)
    system = list(range(100, 130))  # 30 tokens
    table.hold(0, system + [1, 2, 3])  # a running slot
    table.hold(3, system + [1, 2, 3, 4, 5, 6])  # a store row, longer
    assert table.match(system + [1, 2, 3, 4, 9]) == (3, 34)
    assert table.match(system + [7]) == (0, 30)  # the first of equal matches
    # the whole of a cached prompt is never reused: its last token gives the first output
    assert table.match(system + [1, 2, 3, 4, 5, 6]) == (3, 35)
    assert table.match(system[:10] + [0] * 20) == (-1, 0)  # below PREFIX_MIN_TOKENS
    assert table.match([5] * (PREFIX_MIN_TOKENS - 1)) == (-1, 0)
    table.release(3)
    table.release(0)
    assert table.match(system + [1]) == (-1, 0)


def test_a_finished_sequence_extends_its_earlier_turn_or_takes_the_least_recently_used_row() -> None:
    table = CachedPrefixes(slots=1, entries=2, columns=128)
    turn1 = list(range(40))
    other = list(range(200, 240))
    first = table.store_row(turn1)
    assert first is not None
    table.hold(first, turn1)
    second = table.store_row(other)
    assert second is not None and second != first
    table.hold(second, other)
    assert table.store_row(turn1[:30]) is None  # already held (and more)
    turn2 = turn1 + list(range(300, 320))
    assert table.store_row(turn2) == first  # the conversation's earlier turn is replaced
    table.hold(first, turn2)
    table.used(first)  # matched again: `other` is now the least recently used
    assert table.store_row(list(range(500, 540))) == second
    assert table.store_row(list(range(5))) is None  # too short to be worth keeping


def test_keeping_a_finished_request_copies_it_into_a_store_row_and_frees_its_slot() -> None:
    table = CachedPrefixes(slots=2, entries=1, columns=64)
    copies: list[tuple[int, int, int]] = []
    sequence = list(range(1, 81))  # longer than a row: its first 64 tokens are kept
    table.hold(1, sequence[:20])
    table.keep(1, sequence, lambda *args: copies.append(args))
    assert copies == [(1, 2, 64)]
    assert table.match(sequence[:70]) == (2, 64)
    table.hold(0, sequence[:20])
    table.keep(0, list(range(5)), lambda *args: copies.append(args))  # too short to store
    assert len(copies) == 1 and table.match(sequence[:20] + [0]) == (2, 20)  # slot 0 freed


def test_moving_a_slot_moves_what_it_holds_and_forget_empties_every_row() -> None:
    table = CachedPrefixes(slots=3, entries=1, columns=64)
    sequence = list(range(1, 33))
    table.hold(2, sequence)
    table.move(2, 0)
    assert table.match(sequence + [9]) == (0, 32)
    table.hold(3, sequence)
    table.forget()
    assert table.match(sequence + [9]) == (-1, 0)
    with pytest.raises(ValueError, match="entry"):
        CachedPrefixes(slots=1, entries=0, columns=8)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_prefill_after_a_copied_prefix_decodes_as_the_whole_prompt_would(attention: str) -> None:
    """A prompt's first 35 tokens copied from a store row, prefilled together with a prompt that
    has nothing cached, and one whose rest pads past the region's end."""
    model = tiny_llama(attention)
    p = prompts(40, 30, 25, 50, seed=1)
    decoder = SlotDecoder(model, 4, 96, torch.device("cpu"), stored=2)
    shared = p[0][:35] + p[1]  # 65 tokens, 35 of them another prompt's
    near_end = p[3][:40] + p[2][:50]  # 90 tokens of a 97-column region: its padding is clamped
    with torch.no_grad():
        decoder.prefill([0], [p[0]])
        decoder.cache.copy_columns(0, 4, 40)  # slot 0's K/V into the store
        decoder.prefill([0, 2], [p[2], p[3]])  # slot 0 is written over
        decoder.cache.copy_columns(4, 1, 35)
        decoder.cache.copy_columns(2, 3, 40)
        first = decoder.prefill([1, 0, 3], [shared, p[2], near_end], [35, 0, 40]).tolist()
        got = {1: [first[0]], 0: [first[1]], 3: [first[2]]}
        for _ in range(5):
            decoder.step()
            for slot in got:
                got[slot].append(int(decoder.tokens[slot]))
    assert got[1] == greedy(model, shared, 6)
    assert got[0] == greedy(model, p[2], 6)
    assert got[3] == greedy(model, near_end, 6)
    with pytest.raises(ValueError, match="leave a prompt token"):
        decoder.prefill([1], [p[1]], [len(p[1])])


def serve_in_turn(engine: SlotEngine, requests: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Each request submitted once the one before finished (a conversation's turns)."""
    answers = []
    for prompt in requests:
        engine.submit(prompt, new_tokens)
        done: list = []
        while not done:
            done = engine.collect(5.0)
        assert done[0].error is None, done[0].error
        answers.append(list(done[0].token_ids))
    return answers


def test_conversations_reuse_their_earlier_turns_and_a_shared_system_prompt() -> None:
    model = tiny_llama()
    system, m1, m2, m3 = prompts(48, 10, 20, 12, seed=5)
    turn1 = system + m1
    turn2 = turn1 + m2  # the client resends the history
    other = system + m3  # another conversation with the same system prompt
    with closing(SlotEngine(model, 4, "cpu", prefix_sharing=True)) as engine:
        engine.reserve(200)
        answers = serve_in_turn(engine, [turn1, turn2, other], 5)
        counters = engine.prefix_counters()
        engine.forget_cached_prefixes()  # a new run of the stream starts cold
        again = serve_in_turn(engine, [turn1], 5)
        after = engine.prefix_counters()
    assert answers == [greedy(model, p, 5) for p in (turn1, turn2, other)]
    assert again[0] == answers[0]
    # turn 2 finds turn 1 (with its answer, which the resent history does not share); the other
    # conversation finds the system prompt
    assert counters == {
        "prompt_tokens": 58 + 78 + 60,
        "lookups": 3,
        "hits": 2,
        "reused_prompt_tokens": 58 + 48,
        "prefill_saved_fraction": pytest.approx((58 + 48) / (58 + 78 + 60)),
    }
    assert after["lookups"] == 4 and after["hits"] == 2


def test_a_request_reuses_the_prompt_of_one_still_running() -> None:
    """Requests sharing a system prompt, the second arriving while the first decodes (paced, so
    that it finishes last): nothing is stored yet, so it copies the prefix out of the first one's
    slot; both decode as alone."""
    model = tiny_llama()
    system, a, b = prompts(40, 8, 12, seed=9)
    with closing(SlotEngine(model, 4, "cpu", prefix_sharing=True, step_interval_seconds=0.02)) as engine:
        engine.reserve(160)
        engine.submit(system + a, 30)
        while engine.prefixes is None or not engine.prefixes.lengths[0]:  # prefilled: slot 0 holds it
            time.sleep(0.001)
        engine.submit(system + b, 5)
        done: dict[int, list[int]] = {}
        while len(done) < 2:
            for c in engine.collect(5.0):
                done[len(c.token_ids)] = list(c.token_ids)
        counters = engine.prefix_counters()
    assert list(done) == [5, 30]  # the first was still running when the second was admitted
    assert done[30] == greedy(model, system + a, 30)
    assert done[5] == greedy(model, system + b, 5)
    assert counters["hits"] == 1 and counters["reused_prompt_tokens"] == 40


def test_without_prefix_sharing_nothing_is_kept_or_counted() -> None:
    model = tiny_llama()
    system, m1 = prompts(48, 10, seed=5)
    with closing(SlotEngine(model, 2, "cpu")) as engine:
        answers = serve_in_turn(engine, [system + m1, system + m1 + m1], 4)
        assert engine.prefix_counters() == {}
        assert engine.decoder is not None and engine.decoder.cache.all_keys.shape[1] == 2
    assert answers[1] == greedy(model, system + m1 + m1, 4)
