"""The prefix-reuse table says `-` (unknown) where the engine reported no prefix counters, and 0%
only for a measured zero: a missing counter printed 0% and `0 / 0`, as if reuse had been looked
for and none found."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from optimizer.report.serving import serving_section
from optimizer.results import CandidateResult

from .factories import torch_candidate
from .test_numbers_s42 import _served, _window

MEASURED_ZERO = {
    "prompt_tokens": 100.0,
    "lookups": 5.0,
    "hits": 0.0,
    "reused_prompt_tokens": 0.0,
    "prefill_saved_fraction": 0.0,
}


def _pair(prefix_on: dict[str, float]) -> list[CandidateResult]:
    """The same candidate with prefix sharing on (its counters `prefix_on`) and off."""
    on = _served(4, [_window(10.0, 100)], 20)
    off = _served(4, [_window(12.0, 100)], 20)
    on = dataclasses.replace(on, candidate=torch_candidate(batch_size=4, prefix_sharing=True))
    assert on.performance is not None and on.performance.serving is not None
    serving = dataclasses.replace(on.performance.serving, prefix=prefix_on)
    return [dataclasses.replace(on, performance=dataclasses.replace(on.performance, serving=serving)), off]


def _prefix_cells(prefix_on: dict[str, float]) -> list[str]:
    """The prefix table's row: its last two cells are prompt tokens reused and hits / lookups."""
    lines = serving_section(_pair(prefix_on), Path("unused"), "")
    table = lines.index("### Prefix KV reuse")
    row = next(line for line in lines[table:] if line.startswith("| torch"))
    return [cell.strip() for cell in row.strip("|").split("|")][-2:]


def test_no_prefix_counters_read_unknown_not_zero() -> None:
    assert _prefix_cells({}) == ["-", "-"]


def test_a_measured_zero_reads_zero() -> None:
    assert _prefix_cells(MEASURED_ZERO) == ["0%", "0 / 5"]


def test_no_prompt_tokens_counted_leaves_the_saved_share_unknown() -> None:
    """0 reused of 0 prompt tokens is no measured 0%: the share is 0/0."""
    nothing = {key: 0.0 for key in MEASURED_ZERO}
    assert _prefix_cells(nothing) == ["-", "0 / 0"]
