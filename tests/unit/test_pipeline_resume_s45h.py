"""optimize(cfg) end to end on fakes (no model, no measuring): a resumed run after an interrupt
among the finalists, a disk that fills while the outputs are written, and an output_dir reused
by a run that stops before writing all of its files (optimizer/pipeline.py)."""

from __future__ import annotations

import errno
import types
from pathlib import Path
from typing import Any

import pytest

from optimizer import pipeline
from optimizer.config import RunConfig, SloConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.search.plan import SearchPlan
from unit.factories import candidate_result, performance_result, quality_result, target_spec, torch_candidate

BATCHES = (1, 2, 4, 8)  # the baseline is batch 1; goodput tokens/J grows with the batch size


class FakeEvaluator:
    """Measures instantly: goodput tokens/J is the batch size; Ctrl-C after `interrupt_after`
    finalist measurements."""

    def __init__(self, store: Any, log: list[tuple[int, str]], interrupt_after: int | None) -> None:
        self.store = store
        self.workload_cfg = types.SimpleNamespace(slo=SloConfig(tpot_ms=250))
        self.log = log
        self.interrupt_after = interrupt_after

    def evaluate(self, candidate: Any, role: str = "candidate", stop_below: float | None = None) -> Any:
        finalists = sum(r == "finalist" for _, r in self.log)
        if role == "finalist" and self.interrupt_after is not None and finalists >= self.interrupt_after:
            raise KeyboardInterrupt
        self.log.append((candidate.batch_size, role))
        goodput = float(candidate.batch_size)
        return candidate_result(
            candidate,
            quality=quality_result(mean_kl=0.05),
            performance=performance_result(goodput_tokens_per_joule=goodput),
            role=role,
            seconds=0.01,
        )


class Fakes:
    """optimizer.pipeline with its setup, plan, idle power, evaluator, recipe and report faked."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.log: list[tuple[int, str]] = []
        self.interrupt_after: int | None = None
        self.report_error: BaseException | None = None
        target = target_spec(cores=64)  # a quiet machine: no load warning
        model = types.SimpleNamespace(name="tiny", format="hf-dir", weight_sha256="ab" * 32)
        self.setup = types.SimpleNamespace(
            model=model, target=target, meter=types.SimpleNamespace(source="estimate")
        )
        candidates = [torch_candidate(batch_size=b) for b in BATCHES]
        plan = SearchPlan(candidates, [], [], candidates[0], "context", "quality-context")
        monkeypatch.setattr(pipeline, "prepare_run_measurement", lambda cfg, cache_dir: self.setup)
        monkeypatch.setattr(pipeline, "plan_search", lambda cfg, setup: plan)
        monkeypatch.setattr(pipeline, "measure_idle_watts", lambda *args: 10.0)
        monkeypatch.setattr(
            pipeline, "build_recipe", lambda cfg, setup, best, *rest: {"best": best.candidate.label()}
        )
        monkeypatch.setattr(pipeline, "write_report", self.write_report)
        monkeypatch.setattr(
            pipeline.Evaluator,
            "for_setup",
            classmethod(
                lambda cls, setup, search, store, device: FakeEvaluator(store, self.log, self.interrupt_after)
            ),
        )

    def write_report(self, output_dir: Path, *args: Any) -> Path:
        if self.report_error is not None:  # before the plot: savefig is the first write
            raise self.report_error
        (output_dir / "pareto.png").write_text("this run's plot")
        return pipeline.write_atomically(output_dir / "report.md", "this run's report")

    def config(self, *overrides: str) -> RunConfig:
        return compose_run_config(
            [
                "target=cpu",
                "search.roofline=false",
                "space.extra=[]",
                "search.finalists=3",
                "search.finalist_rounds=2",
                f"output_dir={self.root / 'out'}",
                f"store_path={self.root / 'trials.db'}",
                f"cache_dir={self.root / 'cache'}",
                *overrides,
            ]
        )


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(tmp_path, monkeypatch)


def test_a_run_on_the_fakes_selects_the_largest_batch(fakes: Fakes) -> None:
    result = pipeline.optimize(fakes.config())
    assert result.best is not None and result.best.candidate.batch_size == 8
    assert [b for b, r in fakes.log if r == "finalist"] == [8, 4, 2, 2, 4, 8]


def test_an_interrupt_among_the_finalists_resumes_without_measuring_again(fakes: Fakes) -> None:
    fakes.interrupt_after = 4  # Ctrl-C in round 2, after its first measurement
    with pytest.raises(KeyboardInterrupt):
        pipeline.optimize(fakes.config())
    searched = [b for b, r in fakes.log if r != "finalist"]
    assert sorted(searched) == sorted(BATCHES)
    fakes.interrupt_after, fakes.log[:] = None, []
    result = pipeline.optimize(fakes.config())
    assert fakes.log == [(4, "finalist"), (8, "finalist")]  # only what the interrupt left
    assert result.best is not None and result.best.candidate.batch_size == 8


def test_a_stricter_quality_bound_rejudges_the_stored_results_without_measuring(fakes: Fakes) -> None:
    """The bound is not in the store's key: a resumed run judges the stored rows under its own."""
    pipeline.optimize(fakes.config())
    fakes.log[:] = []
    result = pipeline.optimize(fakes.config("quality.max_kl=0.01"))
    assert fakes.log == []
    assert result.best is None and result.infeasible is not None and result.infeasible.field == "quality"
    assert not (fakes.root / "out" / "recipe.yaml").exists()  # the earlier run's recipe went


def full_disk(*args: Any) -> Path:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["write_recipe", "write_report"])
def test_a_full_disk_while_writing_the_outputs_names_output_dir_and_keeps_the_measurements(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """Not a crash reported as a bug (exit 3 and a traceback): what the user fixes on the disk,
    with the measurements safe in the store for the same command to reuse."""
    monkeypatch.setattr(pipeline, writer, full_disk)
    with pytest.raises(UserError) as raised:
        pipeline.optimize(fakes.config())
    error = raised.value
    assert error.field == "output_dir"
    assert "No space left on device" in error.problem and str(fakes.root / "out") in error.problem
    assert "run the same command" in error.fix
    monkeypatch.undo()  # the disk has room again: nothing is measured twice
    rerun = Fakes(fakes.root, monkeypatch)
    result = pipeline.optimize(rerun.config())
    assert rerun.log == [] and result.recipe_path is not None and result.recipe_path.is_file()


EARLIER = ("recipe.yaml", "report.md", "pareto.png", "results.jsonl", "config.yaml")


def test_a_run_stopped_while_writing_leaves_no_earlier_runs_file_beside_its_own(fakes: Fakes) -> None:
    """output_dir reused: a Ctrl-C (or a failing plot) between this run's recipe and its report
    must not leave the earlier run's plot, results or config beside this run's recipe."""
    out = fakes.root / "out"
    out.mkdir()
    for name in EARLIER:
        (out / name).write_text("an earlier run's")
    fakes.report_error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pipeline.optimize(fakes.config())
    earlier = [
        name for name in EARLIER if (out / name).is_file() and (out / name).read_text() == "an earlier run's"
    ]
    assert earlier == []
    assert (out / "recipe.yaml").is_file()  # the product, written first
