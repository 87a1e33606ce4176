"""A trace line's conversation and turn are what they claim to be."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from optimizer.config import compose_run_config
from optimizer.errors import UserError
from unit.test_workload_refusals import read


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


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            ["workload.rate=2", "workload.prompt_lengths.max=100", "workload.seed=3"],
            "workload.prompt_lengths.max, workload.rate ignored",
        ),
        (["workload.turns=1"], "workload.turns ignored"),
        ([], None),  # the agent preset's own rate, turns and lengths are not the user's doing
        (["workload.seed=3", "workload.warmup_requests=2"], None),  # what a trace still reads
    ],
)
def test_overrides_a_trace_ignores_are_named_once(
    caplog: pytest.LogCaptureFixture, overrides: list[str], named: str | None
) -> None:
    with caplog.at_level(logging.WARNING, logger="optimizer.config.workload"):
        compose_run_config(["workload=agent", "workload.trace=t.jsonl", *overrides])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if named is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(named), warnings
        assert "workload.trace sets the requests" in warnings[0]


def test_a_generated_stream_says_nothing_of_its_own_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="optimizer.config.workload"):
        compose_run_config(["workload=agent", "workload.rate=2", "workload.turns=3"])
    assert caplog.text == ""
