"""The slot loop's table of what each running request has produced (SlotTable)."""

from __future__ import annotations

import numpy as np

from optimizer.backends.torch.slot_requests import SlotRequest, SlotTable


def test_a_step_records_every_busy_slot_and_returns_the_complete_ones() -> None:
    table = SlotTable(4)
    short, long = SlotRequest("a", (1, 2, 3), 2), SlotRequest("b", (4,), 5)
    table.admit(0, short)
    table.admit(1, long)
    assert table.tokens.shape == (4, 5)  # as wide as the longest answer asked
    assert table.columns(2) == 3  # the prefill writes columns 0..2 of slot 0
    assert table.record(table.front[:2], np.array([7, 8]), 1.0).tolist() == []
    assert table.columns(2) == 4
    assert table.record(table.front[:2], [9, 10], 2.0).tolist() == [0]  # `short` has its 2 tokens
    assert table.fill(0, short).tokens == [7, 9] and short.times == [1.0, 2.0]
    assert table.fill(1, long).tokens == [8, 10]


def test_a_moved_request_keeps_its_tokens_times_and_length() -> None:
    table = SlotTable(3)
    request = SlotRequest("c", (1, 2), 3)
    table.admit(2, request)
    table.record(np.array([2]), [5], 0.5)
    table.move(2, 0)
    assert table.columns(1) == 3
    assert table.record(table.front[:1], [6], 0.75).tolist() == []
    assert table.record(table.front[:1], [7], 1.0).tolist() == [0]
    assert table.fill(0, request).completion().token_ids == (5, 6, 7)
    assert request.times == [0.5, 0.75, 1.0]


def test_a_request_admitted_again_into_a_slot_starts_empty() -> None:
    table = SlotTable(1)
    table.admit(0, SlotRequest("d", (1,), 2))
    table.record(np.array([0]), [3], 0.0)
    again = SlotRequest("e", (1, 1, 1), 1)
    table.admit(0, again)
    assert table.columns(1) == 3
    assert table.record(np.array([0]), [4], 1.0).tolist() == [0]
    assert table.fill(0, again).tokens == [4]
