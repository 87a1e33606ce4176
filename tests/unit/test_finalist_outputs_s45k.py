"""The finalists' outputs: a row in results.jsonl per measurement (a failed finalist is not
measured again, nor written again), plots written whole or not at all, and the finalists'
re-measurement time in the report's evaluation seconds."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.figure import Figure

from optimizer.config import RunConfig, SearchConfig
from optimizer.errors import UserError
from optimizer.report.markdown import write_report
from optimizer.report.plots import plot_pareto
from optimizer.report.serving import plot_load
from optimizer.results import FAILED
from optimizer.search.finalists import _round_store, remeasure
from optimizer.search.runner import SearchOutcome
from optimizer.select import select_finalist
from optimizer.store import TrialStore
from optimizer.store.leases import _host

from .factories import candidate_result, quality_result, target_spec, torch_candidate
from .test_finalists import SLO, FakeEvaluator, measured


def _killed_twice_in_round_one(tmp_path: Path, pool: list) -> TrialStore:  # type: ignore[type-arg]
    """A store where two processes died measuring the first finalist's first round."""
    store = TrialStore(tmp_path / "t.db", "ctx")
    rounds = _round_store(store, pool, 0)
    assert rounds is not None
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    crasher = pool[0].candidate
    for _ in range(2):
        dead = TrialStore(tmp_path / "t.db", rounds.context, worker=f"{_host()}:{gone.pid}:x")
        assert dead.claim(crasher.key(), 3600)
        assert rounds.claim(crasher.key(), 60)
        rounds.release(crasher.key())
    return store


def test_a_failed_finalist_is_one_row_yet_fails_every_round_of_its_selection(tmp_path: Path) -> None:
    """Before, its failure was copied into round 2's results too: results.jsonl held it twice with
    role `finalist`, measured once."""
    pool = [measured(b, [float(b)]) for b in (16, 8, 4)]
    evaluator = FakeEvaluator(_killed_twice_in_round_one(tmp_path, pool))
    picked = remeasure(evaluator, pool, SearchConfig(finalists=3, finalist_rounds=2))  # type: ignore[arg-type]
    assert picked is not None
    remeasured, selection = picked
    assert evaluator.order == [8, 4, 4, 8]
    assert [r.status for r in remeasured].count(FAILED) == 1  # one failure (two deaths), one row
    assert len(remeasured) == 5  # 4 measurements and the failure
    # selection still sees it fail in every round, as it did with the copy among the rows
    [failed] = [r for r in remeasured if r.status == FAILED]
    per_round = {r.candidate.key(): [x for x in remeasured if x.candidate == r.candidate] for r in pool}
    per_round[failed.candidate.key()] = [failed, failed]
    assert selection == select_finalist(pool, per_round, SLO, SearchConfig().slo_margin)
    assert selection.winner == pool[1].candidate.key()
    assert selection.finalists[-1].samples == [] and not selection.finalists[-1].feasible


def test_a_round_an_earlier_run_stored_is_marked_reused(tmp_path: Path) -> None:
    pool = [measured(b, [float(b)]) for b in (16, 8)]
    search = SearchConfig(finalists=2, finalist_rounds=1)
    first = remeasure(FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx")), pool, search)  # type: ignore[arg-type]
    assert first is not None and not any(r.reused for r in first[0])
    again = remeasure(FakeEvaluator(TrialStore(tmp_path / "t.db", "ctx")), pool, search)  # type: ignore[arg-type]
    assert again is not None and all(r.reused for r in again[0])


def _torn_savefig(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
    Path(str(fname)).write_bytes(b"\x89PNG torn")  # half an image, then the disk fills
    raise OSError(28, "No space left on device")


@pytest.mark.filterwarnings("ignore:No artists with labels")  # an empty load plot
@pytest.mark.parametrize("plot", ["pareto", "load"])
def test_a_crash_mid_save_leaves_the_earlier_plot_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plot: str
) -> None:
    path = tmp_path / f"{plot}.png"
    result = candidate_result(quality=quality_result())

    def draw() -> None:
        if plot == "pareto":
            plot_pareto(path, [result], [], None, result, 0.01, "estimate")
        else:
            plot_load(path, [])

    draw()
    whole = path.read_bytes()
    assert whole.startswith(b"\x89PNG") and len(whole) > 1000
    monkeypatch.setattr(Figure, "savefig", _torn_savefig)
    with pytest.raises(OSError):
        draw()
    assert path.read_bytes() == whole  # not torn
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def test_the_report_counts_the_finalists_re_measurement_time(tmp_path: Path) -> None:
    """Before, "s spent evaluating in this run" was the search's store alone (its own context):
    the finalists' rounds, each as long as a search evaluation, were left out."""
    base = candidate_result(
        candidate=torch_candidate(batch_size=1), role="baseline", quality=quality_result()
    )
    outcome = SearchOutcome(
        baseline=base, baseline_in_space=True, results=[base], not_reached=[], measuring_seconds=120.0
    )
    model = SimpleNamespace(
        name="tiny",
        source="/m/tiny",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )
    setup = SimpleNamespace(
        model=model, target=target_spec(), meter=SimpleNamespace(source="estimate"), stream=None
    )
    rounds = [replace(measured(b, [float(b)]), role="finalist", seconds=s) for b, s in ((8, 40.0), (4, 30.0))]
    stored = replace(measured(8, [8.0]), role="finalist", seconds=500.0, reused=True)  # an earlier run's
    nothing = UserError("workload.slo", "nothing met it", "relax it")
    text = write_report(
        tmp_path,
        RunConfig(),
        setup,
        outcome,
        [],
        None,
        1.0,
        nothing,
        None,
        [*rounds, stored],  # type: ignore[arg-type]
    ).read_text()
    line = next(x for x in text.splitlines() if "spent evaluating" in x)
    assert "190 s spent evaluating in this run (summed over workers)" in line, line
    assert "70 s of them re-measuring finalists" in line, line
