"""The run's outputs agree with each other: a reused output_dir interrupted during the final writes
keeps no earlier report beside this run's recipe, the Pareto list shows the selected candidate at
the figure the plot's star marks, and the load curve's tok/J is pooled as the serving table's."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from optimizer import pipeline
from optimizer.config import RunConfig
from optimizer.measure.load import curve_point
from optimizer.report import markdown
from optimizer.report.serving import plot_load, serving_section
from optimizer.results import CandidateResult
from optimizer.search.runner import SearchOutcome

from .factories import candidate_result, performance_result, quality_result, target_spec, torch_candidate
from .test_numbers_s42 import _served, _window

EARLIER = "an earlier run's\n"


def _setup() -> SimpleNamespace:
    model = SimpleNamespace(
        name="tiny",
        source="/m/tiny",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )
    return SimpleNamespace(
        model=model, target=target_spec(), meter=SimpleNamespace(source="estimate"), stream=None
    )


def _interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: CandidateResult) -> Path:
    """`pipeline._optimize` in an output_dir an earlier run wrote, its search faked to `result`,
    interrupted (Ctrl-C, SIGTERM) while the report is written."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("recipe.yaml", "report.md"):
        (out / name).write_text(EARLIER)
    outcome = SearchOutcome(
        baseline=result, baseline_in_space=True, results=[result], not_reached=[], measuring_seconds=1.0
    )
    plan = SimpleNamespace(
        candidates=[result.candidate],
        excluded=[],
        pruned=[],
        baseline=result.candidate,
        context="c",
        quality_context="q",
    )
    fakes: dict[str, Any] = {
        "open_database": lambda path: None,
        "prepare_run_measurement": lambda cfg, cache: _setup(),
        "plan_search": lambda cfg, setup: plan,
        "extras_note": lambda *args: "",
        "_warn_if_busy": lambda target: None,
        "TrialStore": lambda *args, **kwargs: SimpleNamespace(describe=lambda: "fake", run_id="r"),
        "DeviceLock": SimpleNamespace(
            for_target=lambda target: SimpleNamespace(exclusive=contextlib.nullcontext)
        ),
        "measure_idle_watts": lambda *args: 1.0,
        "rates_for": lambda *args: None,
        "Evaluator": SimpleNamespace(for_setup=lambda *args: None),
        "run_search": lambda *args, **kwargs: outcome,
        "remeasure": lambda *args: None,
        "build_recipe": lambda *args: {"schema": "this run's"},
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pipeline, name, fake)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_report", interrupted)
    cfg = dataclasses.replace(
        RunConfig(), output_dir=str(out), store_path=str(tmp_path / "t.db"), cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(KeyboardInterrupt):
        pipeline._optimize(cfg, out)
    return out


def test_an_interrupt_while_reporting_leaves_no_recipe_beside_an_earlier_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe was written first, the report last: Ctrl-C between them left this run's
    recipe.yaml beside the earlier run's report.md in a reused output_dir. The recipe stays (the
    product, kept even when a plot fails); the earlier report goes."""
    selected = candidate_result(
        torch_candidate(batch_size=2), quality=quality_result(), performance=performance_result()
    )
    out = _interrupted_run(tmp_path, monkeypatch, selected)
    assert (out / "recipe.yaml").read_text() != EARLIER  # this run's
    assert not (out / "report.md").exists()  # the earlier run's, no longer this directory's


def test_an_interrupt_with_nothing_selected_leaves_no_earlier_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing feasible: the earlier recipe went, the earlier report (naming its selection) stayed."""
    missed = candidate_result(
        torch_candidate(batch_size=2),
        quality=quality_result(),
        performance=performance_result(slo_violations=["TPOT p90 300 ms > workload.slo.tpot_ms 250"]),
    )
    out = _interrupted_run(tmp_path, monkeypatch, missed)
    assert not (out / "recipe.yaml").exists() and not (out / "report.md").exists()


def test_the_pareto_list_shows_the_selected_candidate_where_the_plots_star_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feasible in the search at 5 tok/J, selected at its re-measured 3 tok/J: the list (and the
    front's line) read 5 while the star stood at 3."""
    base = candidate_result(
        torch_candidate(batch_size=1),
        role="baseline",
        quality=quality_result(),
        performance=performance_result(2.0),
    )
    searched = candidate_result(
        torch_candidate(batch_size=8),
        quality=quality_result(mean_kl=0.01),
        performance=performance_result(5.0),
    )
    best = dataclasses.replace(searched, role="finalist", performance=performance_result(3.0))
    outcome = SearchOutcome(
        baseline=base, baseline_in_space=True, results=[base, searched], not_reached=[], measuring_seconds=1.0
    )
    drawn: dict[str, Any] = {}

    def plot(
        path: Path, results: Any, front: list[CandidateResult], star: CandidateResult, *rest: Any
    ) -> None:
        drawn.update(front=[r.objective for r in front], star=star.objective)

    monkeypatch.setattr(markdown, "plot_pareto", plot)
    text = markdown.write_report(tmp_path, RunConfig(), _setup(), outcome, [], best, 3.0, None).read_text()
    assert drawn == {"front": [2.0, 3.0], "star": 3.0}
    lines = text.splitlines()
    heading = next(line for line in lines if "Pareto front (" in line)
    assert "the selected candidate at its finalist re-measurement, as the plot's star" in heading
    assert f"- {searched.candidate.label()} (finalist re-measurement): 3.00 tok/J, KL 0.0100" in lines
    # its search figure is not listed beside it
    assert not any(line.startswith(f"- {searched.candidate.label()}: 5.00") for line in lines)


def test_the_load_curve_pools_as_the_serving_table_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the selection rate the curve drew the mean of per-window tok/J (50.5) where the serving
    table pools all tokens over all joules (1.98)."""
    from matplotlib.figure import Figure

    selected = _served(8, [_window(1.0, 100), _window(100.0, 100)], 20)
    other = _served(8, [_window(5.0, 100)], 10).performance
    assert selected.performance is not None and other is not None and other.serving is not None
    low = dataclasses.replace(other, serving=dataclasses.replace(other.serving, rate=0.5))
    serving = selected.performance.serving
    assert serving is not None
    curve = [curve_point(low), curve_point(selected.performance)]
    performance = dataclasses.replace(selected.performance, serving=dataclasses.replace(serving, curve=curve))
    served = dataclasses.replace(selected, performance=performance)
    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: saved.append(self))
    plot_load(Path("unused.png"), [served])
    (axes, *_) = saved[0].axes
    assert list(axes.get_lines()[0].get_ydata()) == pytest.approx([20.0, 200 / 101])
    assert "pooled" in axes.get_title()
    row = next(line for line in serving_section([served], Path("unused"), "") if line.startswith("| torch"))
    assert row.startswith(f"| {served.candidate.label()} | 1.98 |")
