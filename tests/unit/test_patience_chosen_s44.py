"""The patience note is for a user who chose a patience that stops nothing (a grid), not for the
default preset's `patience: 8` on a small `auto` space."""

from __future__ import annotations

import pytest

from optimizer.config.compose import compose_run_config
from optimizer.search.samplers import GridSampler, patience_note


def _note(overrides: list[str]) -> str | None:
    cfg = compose_run_config(overrides).search
    assert cfg.patience == 8 or "search.patience=3" in overrides
    return patience_note(cfg, GridSampler([]), 7)


def test_the_default_presets_patience_says_nothing() -> None:
    assert _note([]) is None


@pytest.mark.parametrize("overrides", [["search.patience=3"], ["search=auto"]])
def test_a_chosen_patience_that_stops_nothing_is_said(overrides: list[str]) -> None:
    note = _note(overrides)
    assert note is not None and "stops nothing" in note


def test_the_flag_is_no_setting() -> None:
    cfg = compose_run_config([])
    assert "patience_chosen" not in cfg.settings()["search"]
