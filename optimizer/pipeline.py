"""`optimize(cfg)`: the one data flow from a RunConfig to a recipe and a report."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from optimizer.config import RunConfig
from optimizer.errors import UserError
from optimizer.files import write_atomically
from optimizer.infeasible import diagnose_infeasible, nothing_to_search, unreliable_finalists
from optimizer.measure.energy import measure_idle_watts
from optimizer.measure.setup import MeasurementSetup
from optimizer.recipe import build_recipe, write_recipe
from optimizer.report.markdown import write_report
from optimizer.results import CandidateResult
from optimizer.search.device_lock import DeviceLock
from optimizer.search.evaluate import Evaluator
from optimizer.search.finalists import merged, remeasure
from optimizer.search.launchers import launch_search
from optimizer.search.plan import SearchPlan, plan_search, prepare_run_measurement
from optimizer.search.roofline import Roofline, rates_for
from optimizer.search.runner import collect_outcome, run_search
from optimizer.select import Selection, lone_edge_reason, select_best
from optimizer.space import enumerate_candidates
from optimizer.store import TrialStore, open_database
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    recipe_path: Path | None
    best: CandidateResult | None
    baseline: CandidateResult | None  # None only for a dry run
    results: list[CandidateResult]
    infeasible: UserError | None  # why nothing could be selected, when nothing could
    dry_run: Path | None = None  # launcher.slurm.dry_run: where the unsubmitted jobs are


# Every file a run writes in output_dir (write_report writes the last two).
OUTPUT_FILES = ("recipe.yaml", "results.jsonl", "config.yaml", "pareto.png", "report.md")
# A write the user's disk refused (full, over quota, read-only, permissions): no bug of wattsmith.
_REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

# Directories this process made for an output_dir (absolute): a run that fails before writing
# removes them again, while empty; one it found, even empty, stays.
_made_for_output: set[Path] = set()


def optimize(cfg: RunConfig) -> RunResult:
    """Search the space, measure, select, and write recipe.yaml, report.md, pareto.png, results.jsonl."""
    cfg = claim_output_dir(cfg)
    output_dir = Path(cfg.output_dir)
    try:
        return _optimize(cfg, output_dir)
    except BaseException:
        _remove_made_while_empty(output_dir)  # a run that failed early leaves no husk behind
        raise


def _optimize(cfg: RunConfig, output_dir: Path) -> RunResult:
    started = time.perf_counter()
    cache_dir = _writable_dir(Path(cfg.cache_dir).expanduser(), "cache_dir")
    open_database(cfg.store_path)
    setup = prepare_run_measurement(cfg, cache_dir)
    model, target = setup.model, setup.target
    log.info(
        "model %s (%s, sha256 %s…), target %s: %s",
        model.name,
        model.format,
        model.weight_sha256[:12],
        target.kind,
        target.gpu.name if target.gpu else target.cpu_model,
    )
    plan = plan_search(cfg, setup)
    log.info(
        "space: %d valid candidates (%d excluded by rules, %d pruned: memory), baseline %s%s",
        len(plan.candidates),
        len(plan.excluded),
        len(plan.pruned),
        plan.baseline.label(),
        extras_note(cfg, plan, setup),
    )
    if not plan.candidates:  # known from the rules and the budget alone: say so before measuring
        raise nothing_to_search(plan, cfg)
    _warn_if_busy(target)
    store = TrialStore(cfg.store_path, plan.context, quality_context=plan.quality_context)
    log.info("store %s (context %s, run %s)", store.describe(), plan.context, store.run_id)
    device = DeviceLock.for_target(target)
    with device.exclusive():  # idle means idle: no other worker builds or measures meanwhile
        idle_watts = measure_idle_watts(
            setup.meter, cfg.workload.idle_seconds, cfg.workload.disturbed_retries
        )
        rates = rates_for(target, idle_watts, cfg.search.roofline_headroom) if cfg.search.roofline else None
    log.info("idle power %.1f W (%s)", idle_watts, setup.meter.source)
    roofline = Roofline(model.shape, cfg.workload, rates, target.is_cuda) if rates is not None else None
    if roofline is not None:
        log.info("roofline: %s", roofline.rates.describe())
    if cfg.search.workers == 1 and cfg.launcher.kind == "local":
        evaluator = Evaluator.for_setup(setup, cfg.search, store, device)
        outcome = run_search(
            plan.candidates, plan.pruned, plan.baseline, evaluator, cfg.search, cfg.quality, roofline=roofline
        )
    else:
        launched = launch_search(cfg, target, plan.context, store.run_id, idle_watts, rates)
        if launched.dry_run is not None:
            return RunResult(output_dir, None, None, None, [], None, dry_run=launched.dry_run)
        outcome = collect_outcome(
            plan.candidates, plan.pruned, plan.baseline, store, cfg.quality, roofline, launched.reports
        )
    best = select_best(outcome.selectable)
    selection: Selection | None = None
    remeasured: list[CandidateResult] = []
    # finalists are measured on this host; with nothing feasible, the near misses are (if any)
    if cfg.launcher.kind == "local":
        evaluator = Evaluator.for_setup(setup, cfg.search, store, device)
        picked = remeasure(evaluator, outcome.selectable, cfg.search)
        if picked is not None:
            remeasured, selection = picked
            log.info("%s: %s", "selected" if selection.feasible else "nothing selected", selection.reason)
            # not feasible: the search's feasible runs were luck at the SLO's edge, or its near
            # misses missed again
            best = (
                merged([r for r in remeasured if r.candidate.key() == selection.winner])
                if selection.feasible
                else None
            )
    if selection is None and best is not None:
        lone = lone_edge_reason(best, cfg.workload.slo, cfg.search.slo_margin)
        if lone is not None:
            log.info("selected: %s", lone)
    recipe = None
    infeasible = None
    if best is not None:
        recipe = build_recipe(cfg, setup, best, outcome, plan.excluded, plan.context, idle_watts, selection)
    else:
        # what the workers' cap counted (free rejections and failures for deaths are no evaluation)
        capped = cfg.search.max_candidates is not None and store.run_count() >= cfg.search.max_candidates
        infeasible = unreliable_finalists(selection, bool(cfg.workload.trace)) or diagnose_infeasible(
            outcome.selectable, len(outcome.not_reached), capped, cfg.workload.slo
        )
    rounds = [replace(r, role="finalist") for r in remeasured]
    with _writing_outputs(output_dir):
        # output_dir may be reused: an interrupt (or a failing plot) among these writes must not
        # leave an earlier run's file beside this run's (its report or plot beside this recipe).
        # The earlier files go first; the recipe, the product, is written before what may fail.
        for earlier in OUTPUT_FILES:
            (output_dir / earlier).unlink(missing_ok=True)
        recipe_path = write_recipe(output_dir / "recipe.yaml", recipe) if recipe is not None else None
        _write_results(output_dir, [*outcome.results, *rounds])
        _write_config(output_dir, cfg)
        write_report(
            output_dir, cfg, setup, outcome, plan.excluded, best, idle_watts, infeasible, selection, rounds
        )
    log.info("wrote %s in %.0f s", output_dir, time.perf_counter() - started)
    return RunResult(output_dir, recipe_path, best, outcome.baseline, outcome.results, infeasible)


def _warn_if_busy(target: TargetSpec) -> None:
    """Another process on the CPU distorts every measurement (all-core torch slowed 8x here)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * target.cores:
        log.warning(
            "the machine is busy (1-min load average %.1f on %d cores): latency and energy figures will be "
            "distorted; measure on a quiet machine",
            load,
            target.cores,
        )


def extras_note(cfg: RunConfig, plan: SearchPlan, setup: MeasurementSetup) -> str:
    """How many of the plan's candidates space.extra adds (those not on the axes' grid): a preset's
    extras are outside its axes, so narrowing space.backends leaves them in."""
    if not cfg.space.extra:
        return ""
    shape, model_format = setup.model.shape, setup.model.format
    grid_valid, grid_excluded = enumerate_candidates(
        replace(cfg.space, extra=[]), setup.target, cfg.workload.serving, shape, model_format
    )
    grid = {c.key() for c in [*grid_valid, *(c for c, _ in grid_excluded)]}
    added = sum(c.key() not in grid for c in plan.candidates)
    # an extra this target cannot run, or too big for the memory budget, adds nothing
    dropped = sum(c.key() not in grid for c, _ in [*plan.excluded, *plan.pruned])
    left_out = f" and {dropped} of those excluded or pruned" if dropped else ""
    return f"; space.extra adds {added} of them{left_out} (space.extra=[] leaves them out)"


def _writable_dir(path: Path, field_name: str, remember: bool = False) -> Path:
    try:
        _make_dirs(path, remember)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            field_name, f"cannot write to {path} ({exc.strerror})", f"pass a writable {field_name}=<dir>"
        ) from None
    return path


def _make_dirs(path: Path, remember: bool) -> None:
    """`mkdir -p path`; `remember`: note the directories it made in `_made_for_output`."""
    missing = []
    for folder in (path.absolute(), *path.absolute().parents):
        if folder.exists():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    if remember:
        _made_for_output.update(missing)


def _remove_made_while_empty(path: Path) -> None:
    """Remove `path`, then its parents, while this process made them for an output_dir and they
    are empty (rmdir refuses the others)."""
    for folder in (path.absolute(), *path.absolute().parents):
        if folder not in _made_for_output:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote into it, or something else lies in it
            return
        _made_for_output.discard(folder)


def claim_output_dir(cfg: RunConfig) -> RunConfig:
    """`cfg` with its output_dir made (a Python caller's run and the command's alike). The composed
    default names the second the run was composed: while output_dir is still it, the run gets a
    directory of its own (`-2`, `-3`... when another run took the name). A directory the caller
    chose is used as it is, existing or not: a re-run there replaces its outputs."""
    path = Path(cfg.output_dir).expanduser()
    if cfg.output_dir == cfg.composed_output_dir:
        path = claim_new_dir(path)
    path = _writable_dir(path, "output_dir", remember=True)
    return replace(cfg, output_dir=str(path), composed_output_dir="")  # claimed: now the caller's


def claim_new_dir(path: Path, field_name: str = "output_dir") -> Path:
    """`path`, created here, or `path-2`, `path-3`... when it exists: the default output_dir names
    the second a run starts, and a second run started in it must not overwrite the first's files."""
    path = path.expanduser()
    suffix = 1
    try:
        _make_dirs(path.parent, remember=True)
        while True:
            claimed = path if suffix == 1 else path.with_name(f"{path.name}-{suffix}")
            try:
                claimed.mkdir()  # atomic: of two runs after one name, one gets it
                _made_for_output.add(claimed.absolute())
                return claimed
            except FileExistsError:
                suffix += 1
    except OSError as exc:
        raise UserError(
            field_name, f"cannot write to {path} ({exc.strerror})", f"pass a writable {field_name}=<dir>"
        ) from None


@contextmanager
def _writing_outputs(output_dir: Path) -> Iterator[None]:
    """A disk that fills, or an output_dir made read-only, while the outputs are written is the
    user's to fix, not a crash: every measurement is in the store already, and the same command
    writes the outputs again without measuring anything."""
    try:
        yield
    except OSError as error:
        if error.errno not in _REFUSED_WRITES:
            raise
        what = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
        raise UserError(
            "output_dir",
            f"cannot write this run's outputs to {output_dir} ({what})",
            "free space on its disk or make it writable (or pass another output_dir=<dir>), then run "
            "the same command: every measurement is in the store, none is repeated",
        ) from None


def _write_results(output_dir: Path, results: list[CandidateResult]) -> None:
    rows = "".join(json.dumps(result.to_dict(), sort_keys=True) + "\n" for result in results)
    write_atomically(output_dir / "results.jsonl", rows)


def _write_config(output_dir: Path, cfg: RunConfig) -> None:
    write_atomically(output_dir / "config.yaml", yaml.safe_dump(cfg.settings(), sort_keys=False))
