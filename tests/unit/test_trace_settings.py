"""A trace line's conversation and turn are what they claim to be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.measure.stream import TextTokens, read_trace


class WordTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


def read(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return read_trace(path, WordTokenizer(), TextTokens(list(range(1000, 1997)), (1,), seed=3)).sha256


def rows_with(extra: dict[str, object]) -> list[dict[str, object]]:
    return [
        {"arrival": 0.0, "prompt_tokens": 8, "output_tokens": 4},
        {"arrival": 0.5, "prompt_tokens": 8, "output_tokens": 4} | extra,
    ]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"conversation": ["c1"]}, "conversation"),
        ({"conversation": {"id": 1}}, "conversation"),
        ({"conversation": 1.5}, "conversation"),
        ({"conversation": True}, "conversation"),
        ({"conversation": "c1", "turn": -1}, "turn"),
    ],
)
def test_a_bad_conversation_or_negative_turn_is_refused_naming_file_line_and_field(
    tmp_path: Path, extra: dict[str, object], field: str
) -> None:
    with pytest.raises(UserError) as info:
        read(tmp_path, rows_with(extra))
    assert info.value.field == f"workload.trace line 2: {field}"
    assert repr(extra[field]) in info.value.problem


@pytest.mark.parametrize(
    "extra",
    [{"conversation": "c1", "turn": 0}, {"conversation": 7, "turn": 2}, {"conversation": None}, {}],
)
def test_string_and_integer_conversations_and_turns_from_zero_are_read(
    tmp_path: Path, extra: dict[str, object]
) -> None:
    read(tmp_path, rows_with(extra))
