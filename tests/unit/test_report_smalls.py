"""Small report defects: a headroom under 100% shown as 100%, "1 cores", an unescaped pipe in the
Selected table."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer.config import RunConfig
from optimizer.report.markdown import _selected_section, write_report
from optimizer.report.selection import selection_section
from optimizer.results import FAILED
from optimizer.search.runner import SearchOutcome
from optimizer.select import Finalist, Selection


def _headroom_cell(headroom: float) -> str:
    finalist = Finalist("x", "k", [1.0, 1.0], 1.0, 1.0, 1.0, headroom, headroom >= 0)
    lines = selection_section(Selection([finalist], "k", False, "only one"), "")
    row = next(line for line in lines if line.startswith("| x |"))
    return row.split("|")[5].strip()


@pytest.mark.parametrize(
    ("headroom", "shown"),
    [(0.995, "99%"), (0.58, "58%"), (0.0, "0%"), (0.004, "0%"), (-0.004, "-1%"), (-0.12, "-12%")],
)
def test_a_headroom_is_never_rounded_up(headroom: float, shown: str) -> None:
    """0.995 printed "100%": no latency at all. A near miss 0.4% over its target printed "-0%"."""
    assert _headroom_cell(headroom) == shown


@pytest.mark.parametrize(("cores", "shown"), [(1, "(1 core)"), (4, "(4 cores)")])
def test_the_header_counts_cores_in_words(
    cores: int, shown: str, tmp_path: Path, make_target, make_result, make_performance
) -> None:
    model = SimpleNamespace(
        name="tiny",
        source="/m/tiny",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )
    setup = SimpleNamespace(
        model=model, target=make_target(cores=cores), meter=SimpleNamespace(source="rapl"), stream=None
    )
    best = make_result(role="baseline", performance=make_performance())
    outcome = SearchOutcome(
        baseline=best, baseline_in_space=True, results=[best], not_reached=[], measuring_seconds=1.0
    )
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], best, 1.0, None).read_text()
    header = text.splitlines()[0]
    assert header.endswith(f"Test CPU {shown}")


def test_a_failed_baselines_reason_keeps_the_selected_table(make_result, make_performance) -> None:
    best = make_result(performance=make_performance())
    baseline = make_result(role="baseline", status=FAILED, reason="exit 1 | out of memory", performance=None)
    lines = _selected_section(best, baseline, RunConfig().accounting, None, "rapl")
    row = next(line for line in lines if line.startswith("| baseline |"))
    assert "exit 1 / out of memory" in row
    assert row.count("|") == 12  # the table's 11 columns, no more
