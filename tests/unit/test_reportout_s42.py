"""report.md and pareto.png on the edges: a KL axis with nothing past 1e-7 (quality.max_kl=0), a
Pareto front of one point, a baseline outside the space beside "Nothing feasible", the flags
table's estimated tokens/J, and the serving line's ordinal."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer.config import RunConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.report.markdown import ESTIMATE_MARK, write_report
from optimizer.report.plots import KL_LINEAR_BELOW, pareto_figure
from optimizer.report.serving import workload_line
from optimizer.results import REJECTED
from optimizer.search.runner import SearchOutcome

# a tick label whose number starts with a minus sign
NEGATIVE = re.compile(r"^\$?(\\mathdefault\{)?[-\u2212]")
TINY_KL = 1.5677888739211936e-07  # a bf16 candidate's KL on the tiny model


def test_a_kl_axis_of_tiny_kls_and_max_kl_0_keeps_its_points_inside(
    make_result, make_candidate, make_quality, make_performance
) -> None:
    """quality.max_kl=0 left the axis ending at the largest KL (1.6e-07): the points sat on its
    right edge, and a -5e-05 tick showed although KL is never negative."""
    import matplotlib.pyplot as plt

    baseline = make_result(quality=make_quality(), performance=make_performance(goodput_tokens_per_joule=107))
    rejected = [
        make_result(
            candidate=make_candidate(batch_size=2**i, precision="bf16"),
            status=REJECTED,
            quality=make_quality(mean_kl=TINY_KL),
        )
        for i in range(4)
    ]
    fig = pareto_figure([baseline, *rejected], [], None, baseline, 0.0, "estimate")
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        left, right = ax.get_xlim()
        labels = [t.get_text() for t in ax.get_xticklabels() if left <= t.get_position()[0] <= right]
        assert not [text for text in labels if NEGATIVE.match(text)], labels
        assert "$\\mathdefault{0}$" in labels
        assert -KL_LINEAR_BELOW < left < 0
        assert right >= 10 * KL_LINEAR_BELOW  # a decade of the log part: tiny KLs sit well inside
    finally:
        plt.close(fig)


def test_a_pareto_front_of_one_point_is_drawn(make_result, make_quality, make_performance) -> None:
    """A dashed line through one point draws nothing: the legend named a front the plot lacked."""
    import matplotlib.pyplot as plt

    only = make_result(quality=make_quality(), performance=make_performance(goodput_tokens_per_joule=2.0))
    fig = pareto_figure([only], [only], only, only, 0.05, "rapl")
    try:
        (front,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "Pareto front"]
        assert len(front.get_xdata()) == 1
        assert front.get_marker() not in (None, "None", "", " ")
    finally:
        plt.close(fig)


@pytest.fixture
def setup(make_target) -> SimpleNamespace:
    model = SimpleNamespace(
        name="tiny",
        source="/m/tiny",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )
    return SimpleNamespace(
        model=model, target=make_target(), meter=SimpleNamespace(source="estimate"), stream=None
    )


def _only_rejected(
    make_result, make_candidate, make_quality, make_performance, in_space: bool
) -> SearchOutcome:
    baseline = make_result(
        candidate=make_candidate(batch_size=1),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(goodput_tokens_per_joule=1.0),
    )
    rejected = make_result(
        candidate=make_candidate(batch_size=8, precision="bf16"),
        status=REJECTED,
        reason="KL too high",
        quality=make_quality(mean_kl=0.3),
    )
    return SearchOutcome(
        baseline=baseline,
        baseline_in_space=in_space,
        results=[baseline, rejected],
        not_reached=[],
        measuring_seconds=1.0,
    )


def test_a_baseline_outside_the_space_is_said_not_selectable(
    tmp_path: Path, setup, make_result, make_candidate, make_quality, make_performance
) -> None:
    """Every candidate rejected, the baseline (outside the space) met the bound: the report read
    "Nothing feasible" beside "measured 1 (feasible 1)" and a "feasible" baseline row."""
    outcome = _only_rejected(make_result, make_candidate, make_quality, make_performance, in_space=False)
    nothing = UserError("quality", "all 1 candidates break the quality bound", "use quality=relaxed")
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], None, 3.0, nothing).read_text()
    assert "**Nothing feasible.**" in text
    search = next(line for line in text.splitlines() if line.startswith("- measured 1 (feasible 1"))
    assert "baseline: outside the space, measured for the ratios only, not selectable" in search
    row = next(line for line in text.splitlines() if line.startswith("| torch fp32 kv=dynamic b1 t4 |"))
    assert "baseline (outside the space, measured for the ratios only, not selectable)." in row


def test_a_baseline_in_the_space_is_not_called_outside(
    tmp_path: Path, setup, make_result, make_candidate, make_quality, make_performance
) -> None:
    outcome = _only_rejected(make_result, make_candidate, make_quality, make_performance, in_space=True)
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], outcome.baseline, 3.0, None).read_text()
    assert "outside the space" not in text
    assert "- measured 1 (feasible 1), rejected by the quality bound 1" in text


@pytest.mark.parametrize("source", ["estimate", "rapl"])
def test_the_flags_caption_is_marked_as_an_estimate(
    source: str, tmp_path: Path, setup, make_result, make_candidate, make_quality, make_performance
) -> None:
    """A screened-out window's flag quotes its tokens/J ("125 goodput tok/J < 442"): the only
    table of estimated figures without the ESTIMATE label."""
    setup.meter.source = source
    outcome = _only_rejected(make_result, make_candidate, make_quality, make_performance, in_space=True)
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], outcome.baseline, 3.0, None).read_text()
    caption = next(line for line in text.splitlines() if "What the energy windows flagged" in line)
    assert caption.startswith(ESTIMATE_MARK) == (source == "estimate")


@pytest.mark.parametrize(
    ("drain", "shown"),
    [
        (0, "to the last;"),
        (1, "to the 2nd from last;"),
        (2, "to the 3rd from last;"),
        (4, "to the 5th from last;"),
        (10, "to the 11th from last;"),
        (21, "to the 22nd from last;"),
    ],
)
def test_the_serving_window_end_has_its_ordinal(drain: int, shown: str) -> None:
    """workload.drain_requests=2 read "to the 3th from last"."""
    line = workload_line(WorkloadConfig(kind="serving", rate=2.0, drain_requests=drain), None)
    assert shown in line
