"""Serving settings a stream would ignore are refused (or flagged), a trace is not held to the
generated stream's count, and a trace's lines say what they mean (no epoch clocks, booleans or
fractional token counts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from optimizer.config import WorkloadConfig
from optimizer.config.workload import warn_unused_turn_gap
from optimizer.errors import UserError
from optimizer.measure.stream import TextTokens, read_trace


def serving(**values: object) -> WorkloadConfig:
    return WorkloadConfig(kind="serving", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("arrivals", ["poisson", "constant"])
def test_arrival_cv_without_gamma_arrivals_is_refused(arrivals: str) -> None:
    with pytest.raises(UserError) as info:
        serving(arrivals=arrivals, arrival_cv=3.0)
    assert "workload.arrival_cv" in str(info.value) and "workload.arrivals=gamma" in str(info.value)
    serving(arrivals=arrivals, arrival_cv=1.0)  # the default says nothing
    serving(arrivals="gamma", arrival_cv=3.0)


def test_no_packaged_preset_sets_an_ignored_arrival_cv_or_turn_gap() -> None:
    from omegaconf import OmegaConf

    from optimizer.config.presets import CONF_DIR

    for preset in sorted((CONF_DIR / "workload").glob("*.yaml")):
        values = OmegaConf.to_container(OmegaConf.load(preset))
        assert isinstance(values, dict)
        if "arrival_cv" in values:
            assert values.get("arrivals") == "gamma", preset.name
        if "turn_gap_seconds" in values:
            assert values.get("turns", 1) > 1, preset.name


@pytest.fixture(autouse=True)
def _warn_afresh() -> None:
    warn_unused_turn_gap.cache_clear()


def test_a_turn_gap_with_single_turns_is_flagged_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    # `workload=agent workload.turns=1` keeps the preset's gap: refusing would make that override
    # need a second one, so the ignored gap is a warning (once: a run composes its config twice)
    with caplog.at_level(logging.WARNING, logger="optimizer.config.workload"):
        serving(turns=1, turn_gap_seconds=6.0)
        serving(turns=1, turn_gap_seconds=6.0)
    assert caplog.text.count("workload.turn_gap_seconds=6 is ignored") == 1
    assert "workload.turns>1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optimizer.config.workload"):
        serving(turns=1)
        serving(turns=4, turn_gap_seconds=6.0)
    assert caplog.text == ""


def test_the_agent_preset_with_single_turns_composes(caplog: pytest.LogCaptureFixture) -> None:
    from optimizer.config.compose import compose_run_config

    with caplog.at_level(logging.WARNING, logger="optimizer.config.workload"):
        run = compose_run_config(["workload=agent", "workload.turns=1"])
    assert run.workload.turns == 1 and "turn_gap_seconds" in caplog.text


def test_a_trace_is_not_held_to_the_generated_streams_request_count() -> None:
    cfg = serving(trace="long.jsonl", warmup_requests=20, drain_requests=20)
    assert cfg.requests == 40  # read only by a generated stream; the trace's length is checked on reading
    with pytest.raises(UserError, match="workload.requests"):
        serving(warmup_requests=20, drain_requests=20)


class WordTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


def read(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return read_trace(path, WordTokenizer(), TextTokens(list(range(1000, 1997)), (1,), seed=3)).sha256


def refusal(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    with pytest.raises(UserError) as info:
        read(tmp_path, rows)
    return str(info.value)


def test_an_epoch_stamped_trace_is_refused_with_the_shift_to_make(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"arrival": 1733140000.0 + 0.25 * i, "prompt_tokens": 8, "output_tokens": 4} for i in range(12)
    ]
    message = refusal(tmp_path, rows)
    assert "line 1: arrival" in message and "1733140000" in message and "subtract" in message


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"output_tokens": 2.9}, "output_tokens"),
        ({"prompt_tokens": 8.5}, "prompt_tokens"),
        ({"turn": True}, "turn"),
        ({"output_tokens": True}, "output_tokens"),
    ],
)
def test_fractional_counts_and_booleans_are_refused_naming_line_and_field(
    tmp_path: Path, row: dict[str, object], field: str
) -> None:
    rows: list[dict[str, object]] = [
        {"arrival": 0.0, "prompt_tokens": 8, "output_tokens": 4},
        {"arrival": 0.5, "prompt_tokens": 8, "output_tokens": 4, "conversation": "c"} | row,
    ]
    assert f"workload.trace line 2: {field}" in refusal(tmp_path, rows)


def test_an_existing_valid_trace_keeps_its_hash(tmp_path: Path) -> None:
    # a late first arrival (under an hour) and whole counts written as floats stay as they were read
    rows: list[dict[str, object]] = [
        {"arrival": 0.5, "prompt": "hello there world", "output_tokens": 64.0},
        {"arrival": 1.25, "prompt_tokens": 12, "output_tokens": 8, "conversation": "c1", "turn": 0},
        {"arrival": 3000.0, "prompt_tokens": 7.0, "output_tokens": 3, "conversation": "c1", "turn": 1},
    ]
    assert read(tmp_path, rows) == "d3258191eb1747cdbb879643f5c03a21d5611f9196e70c62da846b585fb27e1b"
