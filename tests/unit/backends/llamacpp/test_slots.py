"""The continuous batch over sequence ids, driven by a fake decode (no llama.cpp)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from optimizer.backends.llamacpp.slots import COPY_MIN_TOKENS, Request, Slots

VOCAB = 50


class FakeDecode:
    """Predicts (last token + 1) % VOCAB and records every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int, int, bool]]] = []

    def __call__(
        self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[bool]
    ) -> np.ndarray:
        self.batches.append(list(zip(tokens, positions, seqs, outputs, strict=True)))
        rows = [np.eye(VOCAB)[(t + 1) % VOCAB] for t, o in zip(tokens, outputs, strict=True) if o]
        return np.array(rows).reshape(len(rows), VOCAB)


def run(slots: Slots, decode: FakeDecode, limit: int = 100) -> list[Request]:
    finished: list[Request] = []
    clock = iter(range(10_000))
    for _ in range(limit):
        if not slots.busy:
            break
        slots.admit(lambda slot, keep: None)
        finished += slots.step(decode, lambda: float(next(clock)))
    return finished


def test_each_request_gets_a_sequence_id_and_greedy_tokens() -> None:
    slots, decode = Slots(slots=2, batch_tokens=64), FakeDecode()
    slots.waiting.extend([Request("a", (1, 2, 3), 3), Request("b", (10, 11), 2)])
    done = {r.request_id: r for r in run(slots, decode)}
    assert done["a"].tokens == [4, 5, 6] and done["b"].tokens == [12, 13]
    first = decode.batches[0]  # both prompts prefilled in one batch, one output each (the last)
    assert [(t, p, s, o) for t, p, s, o in first] == [
        (1, 0, 0, False), (2, 1, 0, False), (3, 2, 0, True), (10, 0, 1, False), (11, 1, 1, True),
    ]  # fmt: skip
    # then one token per decoding sequence, at the next position
    assert decode.batches[1] == [(4, 3, 0, True), (12, 2, 1, True)]
    assert len(done["a"].times) == 3 and done["a"].times == sorted(done["a"].times)


def test_a_long_prompt_is_split_and_decoding_sequences_go_first() -> None:
    slots, decode = Slots(slots=2, batch_tokens=4), FakeDecode()
    slots.waiting.append(Request("short", (1,), 4))
    slots.admit(lambda slot, keep: None)
    slots.step(decode, lambda: 0.0)  # "short" has its first token
    slots.waiting.append(Request("long", tuple(range(20, 30)), 1))
    run(slots, decode)
    second = decode.batches[1]
    assert second[0] == (2, 1, 0, True)  # the decoding sequence's token first
    assert [s for *_, s, _ in second[1:]] == [1, 1, 1]  # then 3 prompt tokens of the long one
    assert all(len(b) <= 4 for b in decode.batches)
    long_outputs = [(t, p) for b in decode.batches for t, p, s, o in b if s == 1 and o]
    assert long_outputs == [(29, 9)]  # only the prompt's last token is an output


def test_waiting_requests_join_when_a_slot_frees() -> None:
    slots, decode = Slots(slots=1, batch_tokens=8), FakeDecode()
    slots.waiting.extend([Request("a", (1,), 2), Request("b", (5,), 2)])
    trimmed: list[tuple[int, int]] = []
    slots.admit(lambda slot, keep: trimmed.append((slot, keep)))
    assert list(slots.active) == [0] and len(slots.waiting) == 1
    finished = []
    for _ in range(10):
        slots.admit(lambda slot, keep: trimmed.append((slot, keep)))
        finished += slots.step(decode, lambda: 0.0)
    assert [r.request_id for r in finished] == ["a", "b"]
    assert trimmed == [(0, 0), (0, 0)]  # all the slot's cells are dropped before each new request
    assert slots.prefix.lookups == 0  # no prefix reuse asked


def test_drop_all_forgets_everything() -> None:
    slots = Slots(slots=1, batch_tokens=8)
    slots.waiting.extend([Request("a", (1,), 2), Request("b", (5,), 2)])
    slots.admit(lambda slot, keep: None)
    assert {r.request_id for r in slots.drop_all()} == {"a", "b"} and not slots.busy


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        Slots(0, 8)
    # a step holds one token of every decoding slot: more slots than batch tokens cannot decode
    with pytest.raises(ValueError, match="n_batch"):
        Slots(9, 8)
    Slots(8, 8)


def test_prefix_reuse_keeps_the_longest_shared_prefix_of_a_free_slot() -> None:
    slots, decode = Slots(slots=2, batch_tokens=64, reuse_prefix=True), FakeDecode()
    system = (7, 7, 7, 7)
    slots.waiting.extend([Request("a", (*system, 1, 2), 2), Request("b", (9, 9), 2)])
    run(slots, decode)
    assert slots.cached == {0: (*system, 1, 2, 3), 1: (9, 9, 10)}  # prompt + outputs but the last
    trimmed: list[tuple[int, int]] = []
    # the second turn resends the history of "a": it goes to slot 0 and keeps 7 of its cells
    slots.waiting.append(Request("a2", (*system, 1, 2, 3, 4, 5), 1))
    slots.admit(lambda slot, keep: trimmed.append((slot, keep)))
    assert trimmed == [(0, 7)] and slots.active[0].fed == 7
    decode.batches.clear()
    slots.step(decode, lambda: 0.0)
    assert decode.batches[0] == [(4, 7, 0, False), (5, 8, 0, True)]  # only the new tokens
    # a prompt entirely cached still feeds its last token (its logits give the first output)
    slots.waiting.append(Request("again", (9, 9), 1))
    slots.admit(lambda slot, keep: trimmed.append((slot, keep)))
    assert trimmed[-1] == (1, 1)
    counts = slots.prefix.as_dict()
    assert counts["lookups"] == 4 and counts["hits"] == 2 and counts["reused_prompt_tokens"] == 8
    assert counts["prefill_saved_fraction"] == pytest.approx(8 / (6 + 2 + 9 + 2))


def test_a_running_requests_cells_are_copied_when_they_share_a_longer_prefix() -> None:
    """New conversations behind the system prompt a running request uses: its cells are copied
    into the emptiest free slots and only the rest of each prompt is fed."""
    system = tuple(range(1, COPY_MIN_TOKENS + 9))  # 40 tokens
    slots, decode = Slots(slots=3, batch_tokens=256, reuse_prefix=True), FakeDecode()
    slots.waiting.append(Request("old", (1, 2, 3, 4, 5), 2))
    run(slots, decode)  # slot 0 keeps (1..5, 6): 6 tokens shared with the system prompt
    slots.waiting.append(Request("a", (*system, 90), 8))
    slots.admit(lambda slot, keep: None)
    assert slots.active[0].fed == 6  # the free slot with the longest match
    slots.step(decode, lambda: 0.0)  # "a" is prefilled and decoding
    assert slots.active[0].cells == (*system, 90)
    copies: list[tuple[int, int]] = []
    trims: list[tuple[int, int]] = []
    slots.waiting.extend([Request("b", (*system, 91, 92), 2), Request("c", (*system, 93), 2)])
    slots.admit(
        lambda slot, keep: trims.append((slot, keep)), lambda source, slot: copies.append((source, slot))
    )
    assert copies == [(0, 1), (0, 2)] and trims == [(1, 40), (2, 40)]
    decode.batches.clear()
    slots.step(decode, lambda: 0.0)
    fed = [(t, p, s) for t, p, s, _ in decode.batches[0] if s > 0]
    assert fed == [(91, 40, 1), (92, 41, 1), (93, 40, 2)]


def test_no_copy_where_a_free_slot_holds_nearly_as_much_or_no_copy_is_offered() -> None:
    system = tuple(range(1, 41))
    for copy_offered in (True, False):
        slots, decode = Slots(slots=2, batch_tokens=256, reuse_prefix=True), FakeDecode()
        slots.waiting.append(Request("turn1", (*system, 50), 1))
        run(slots, decode)  # slot 0 caches the system prompt and 50
        slots.waiting.append(Request("a", (*system, 60, 61), 8))
        slots.admit(lambda slot, keep: None)
        copies: list[tuple[int, int]] = []
        slots.waiting.append(Request("b", (*system, 60, 62), 1))
        record = (lambda s, t, found=copies: found.append((s, t))) if copy_offered else None
        slots.admit(lambda slot, keep: None, record)
        # "a" (in slot 0, which held turn1) holds the 40 system tokens it kept, slot 1 nothing:
        # a copy saves 40 >= COPY_MIN_TOKENS when offered
        assert copies == ([(0, 1)] if copy_offered else [])
        assert slots.active[1].fed == (40 if copy_offered else 0)
    slots, decode = Slots(slots=2, batch_tokens=256, reuse_prefix=True), FakeDecode()
    slots.waiting.extend([Request("x", (*system, 1), 1), Request("y", (*system[:30], 2), 1)])
    run(slots, decode)  # slot 0: system + 1, slot 1: 30 system tokens + 2
    slots.waiting.append(Request("a", (*system, 3), 8))
    slots.admit(lambda slot, keep: None)  # takes slot 0 (40 shared)
    copies = []
    slots.waiting.append(Request("b", (*system, 4), 1))
    slots.admit(lambda slot, keep: None, lambda s, t: copies.append((s, t)))
    assert copies == [] and slots.active[1].fed == 30  # 40 - 30 < COPY_MIN_TOKENS: slot 1's cache
