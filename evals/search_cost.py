"""Search cost benchmark: the full grid once, then each strategy, side by side in one process.

Every strategy searches the same space on the same model, target, workload and quality bound,
each with a fresh store (nothing reused) and a time budget of `--fraction` of the grid's
measuring seconds. Printed per strategy: its winner, the winner's goodput tokens/J as the
strategy measured it and as the grid measured it, the measuring seconds it spent, the ratio to
the grid's, and when (in its own measuring seconds) it first measured its winner.

A live run is one draw of a random process. The replay section runs each strategy again for many
seeds on the grid's own measurements (each candidate costs the seconds the grid spent on it, a
rejection by already-known quality costs nothing), which shows how often a strategy finds the grid's
winner, or one within the measurement noise, inside the budget.

    python evals/search_cost.py                                 # SmolLM2 on this CPU, ~45 min on 2 cores
    python evals/search_cost.py --replay-only evals/results/<run>/search_cost.json --seeds 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import energy_source_line  # noqa: E402

from optimizer.config import OptunaConfig, RunConfig, SearchConfig, compose_run_config  # noqa: E402
from optimizer.measure.workload import Spread  # noqa: E402
from optimizer.model import ModelShape  # noqa: E402
from optimizer.results import MEASURED, REJECTED, CandidateResult  # noqa: E402
from optimizer.search.roofline import Roofline, RooflineRates  # noqa: E402
from optimizer.search.runner import SearchOutcome, run_search  # noqa: E402
from optimizer.select import select_best  # noqa: E402
from optimizer.space import Candidate  # noqa: E402
from optimizer.store import TrialStore  # noqa: E402

# A reduced but real CPU space on the packaged SmolLM2-135M: 2 precisions x 3 weight formats x
# 2 KV caches x 7 batch sizes x 2 thread counts = 168 candidates. On this model int8-dynamic and
# int8-weight break the default quality bound (found by the quality probe, not assumed).
SPACE = [
    "space=cpu-batch",  # offline torch batches; the default space is a serving one
    "space.torch.precisions=[fp32,bf16]",
    "space.torch.quantizations=[none,int8-dynamic,int8-weight]",
    "space.torch.kv_caches=[dynamic,static]",
    "space.batch_sizes=[1,2,4,8,16,32,64]",
    "space.threads=[1,0]",
]
# Short windows (affordable on 2 cores): 32-token prompts, 16 new tokens, 2 windows >= 1 s after a
# warm-up batch; quality on 8 x 128 held-out tokens.
PROTOCOL = [
    "target=cpu",
    "workload=quick",
    "workload.min_window_seconds=1.0",
    "workload.repeats=2",
    "workload.idle_seconds=2",
    "quality.num_sequences=8",
]
# "+roofline": Optuna's first trials are the highest-roofline candidate of each numerics (the
# default); "tpe" alone starts from random trials.
STRATEGIES: dict[str, SearchConfig] = {
    "random": SearchConfig(sampler="random"),
    "tpe": SearchConfig(sampler="optuna", optuna=OptunaConfig(algorithm="tpe", warm_start=False)),
    "tpe+roofline": SearchConfig(sampler="optuna", optuna=OptunaConfig(algorithm="tpe")),
    "nsga2+roofline": SearchConfig(sampler="optuna", optuna=OptunaConfig(algorithm="nsga2")),
    "bound": SearchConfig(sampler="bound", screen_margin=None),
    "auto": SearchConfig(sampler="auto", patience=8),  # the default: bound first, patience, screening
}


@dataclass(frozen=True)
class Run:
    name: str
    outcome: SearchOutcome
    history: list[CandidateResult]  # evaluation order

    @property
    def winner(self) -> CandidateResult | None:
        return select_best(self.outcome.selectable)

    @property
    def seconds(self) -> float:
        return self.outcome.measuring_seconds

    def found_at(self) -> float | None:
        """Measuring seconds spent until the winner was measured."""
        return found_at(self.history, self.winner)


def found_at(history: list[CandidateResult], winner: CandidateResult | None) -> float | None:
    """Seconds spent along `history` until `winner` was measured (None: never)."""
    spent = 0.0
    for result in history:
        spent += result.seconds
        if winner is not None and result.candidate == winner.candidate:
            return spent
    return None


def live_runs(fraction: float, workdir: Path) -> tuple[list[Run], RunConfig, Roofline | None, dict[str, Any]]:
    from optimizer.measure.energy import measure_idle_watts
    from optimizer.measure.setup import prepare_measurement
    from optimizer.search.device_lock import DeviceLock
    from optimizer.search.evaluate import Evaluator
    from optimizer.search.plan import plan_search
    from optimizer.search.roofline import rates_for

    cfg = compose_run_config([*SPACE, *PROTOCOL])
    cache = Path(cfg.cache_dir).expanduser()
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, cache, max([*cfg.space.batch_sizes, 16])
    )
    plan = plan_search(cfg, setup)
    device = DeviceLock.for_target(setup.target)
    with device.exclusive():
        idle = measure_idle_watts(setup.meter, cfg.workload.idle_seconds)
        rates = rates_for(setup.target, idle, cfg.search.roofline_headroom)
    roofline = Roofline(setup.model.shape, cfg.workload, rates, setup.target.is_cuda) if rates else None

    def search(name: str, search_cfg: SearchConfig) -> Run:
        store = TrialStore(workdir / f"{name}.db", plan.context)
        evaluator = Evaluator.for_setup(setup, search_cfg, store, device)
        print(f"\n== {name} ({search_cfg.budget_minutes:.1f} min budget)", flush=True)
        outcome = run_search(
            plan.candidates,
            plan.pruned,
            plan.baseline,
            evaluator,
            search_cfg,
            cfg.quality,
            progress=lambda line: print(line, flush=True),
            roofline=roofline,
        )
        store.refresh()
        return Run(name, outcome, store.run_history())

    # every window of every candidate: the replays emulate screening from them
    grid = search(
        "grid", SearchConfig(sampler="grid", budget_minutes=24 * 60, screen_margin=None, finalists=0)
    )
    budget_minutes = fraction * grid.seconds / 60
    runs = [grid] + [search(n, replace(c, budget_minutes=budget_minutes)) for n, c in STRATEGIES.items()]
    facts = {
        "model": setup.model.name,
        "cpu": f"{setup.target.cpu_model} ({setup.target.cores} cores)",
        "energy_source": setup.meter.source,
        "idle_watts": idle,
        "candidates": len(plan.candidates),
        "roofline": rates.describe() if rates else None,
        "rates": asdict(rates) if rates else None,
        "shape": asdict(setup.model.shape),
        "space": SPACE,
        "protocol": PROTOCOL,
        "budget_fraction": fraction,
    }
    return runs, cfg, roofline, facts


def measurement_noise(runs: list[Run]) -> float:
    """Median relative difference between two live measurements of the same candidate."""
    grid = {
        r.candidate.key(): r.objective for r in runs[0].history if r.status == MEASURED and r.objective > 0
    }
    diffs = [
        abs(r.objective - grid[r.candidate.key()]) / max(r.objective, grid[r.candidate.key()])
        for run in runs[1:]
        for r in run.history
        if r.status == MEASURED and r.candidate.key() in grid and r.objective > 0
    ]
    return statistics.median(diffs) if diffs else 0.0


class ReplayEvaluator:
    """Serves the grid's recorded results; each costs what the grid spent on it, on a clock.

    The grid paid each numerics' quality probe on its first candidate of those numerics; in a
    replay the first candidate visited of a numerics pays it instead, and a rejection by quality
    already known costs nothing (nothing is built)."""

    def __init__(self, grid: list[CandidateResult], store: TrialStore) -> None:
        self.store = store
        self.now = 0.0
        self._results = {r.candidate.key(): r for r in grid}
        self._payers: dict[str, CandidateResult] = {}
        for r in grid:
            self._payers.setdefault(r.candidate.numerics_key(), r)
        self._known: set[str] = set()

    def _cost(self, result: CandidateResult) -> float:
        numerics = result.candidate.numerics_key()
        payer = self._payers[numerics]
        first = numerics not in self._known
        self._known.add(numerics)
        if result.status == REJECTED:
            return payer.seconds if first else 0.0
        probe = payer.quality.seconds if payer.quality is not None else 0.0
        paid_here = result.candidate == payer.candidate
        return max(result.seconds - (probe if paid_here else 0.0) + (probe if first else 0.0), 0.0)

    def evaluate(
        self, candidate: Candidate, role: str = "candidate", stop_below: float | None = None
    ) -> CandidateResult:
        result = self._results[candidate.key()]
        cost = self._cost(result)
        result, saved = screened(result, stop_below)
        self.now += cost - saved
        return replace(result, seconds=cost - saved, role=role)


def screened(result: CandidateResult, stop_below: float | None) -> tuple[CandidateResult, float]:
    """The recorded result as screening would have left it (its windows up to the one that fell
    below `stop_below`), and the window seconds that saved."""
    perf = result.performance
    if perf is None or stop_below is None:
        return result, 0.0
    windows = perf.windows
    for kept in range(1, len(windows)):
        if statistics.fmean(w.goodput_tokens_per_joule for w in windows[:kept]) < stop_below:
            short = replace(
                perf,
                windows=windows[:kept],
                goodput_tokens_per_joule=Spread.of([w.goodput_tokens_per_joule for w in windows[:kept]]),
                tokens_per_joule=Spread.of([w.tokens_per_joule for w in windows[:kept]]),
            )
            return replace(result, performance=short), sum(w.seconds for w in windows[kept:])
    return result, 0.0


def replay(
    grid: list[CandidateResult],
    cfg: RunConfig,
    strategy: SearchConfig,
    budget_seconds: float,
    seed: int,
    roofline: Roofline | None,
) -> tuple[CandidateResult | None, float, float | None]:
    """(winner, seconds spent, seconds until the winner) for one seeded replay; the grid measured
    the baseline first."""
    baseline = grid[0].candidate
    candidates = [r.candidate for r in grid]
    with tempfile.TemporaryDirectory() as folder:
        store = TrialStore(Path(folder) / "replay.db", "replay")
        evaluator = ReplayEvaluator(grid, store)
        search = replace(strategy, seed=seed, budget_minutes=budget_seconds / 60)
        outcome = run_search(
            candidates,
            [],
            baseline,
            evaluator,  # type: ignore[arg-type]  # serves recorded results
            search,
            cfg.quality,
            progress=lambda _: None,
            roofline=roofline,
            clock=lambda: evaluator.now,
        )
        store.refresh()
        history = store.run_history()
    winner = select_best(outcome.selectable)
    return winner, sum(r.seconds for r in history), found_at(history, winner)


def print_live(runs: list[Run], noise: float) -> list[dict[str, Any]]:
    grid = runs[0]
    grid_value = {r.candidate.key(): r.objective for r in grid.history}
    best = grid.winner
    assert best is not None, "the grid found nothing feasible"
    tolerance = best.objective * (1 - noise)
    print(f"\nmeasurement noise (median relative difference of re-measured candidates): {noise:.1%}")
    header = f"{'strategy':<13} {'winner':<40} {'tok/J':>7} {'grid tok/J':>10} {'meas. s':>8} {'ratio':>6} {'found at':>9}  within noise"
    print(header)
    print("-" * len(header))
    rows = []
    for run in runs:
        winner = run.winner
        label = winner.candidate.label() if winner else "(nothing feasible)"
        own = winner.objective if winner else 0.0
        by_grid = grid_value.get(winner.candidate.key(), 0.0) if winner else 0.0
        ratio = run.seconds / grid.seconds
        found = run.found_at()
        hit = winner is not None and (winner.candidate == best.candidate or by_grid >= tolerance)
        print(
            f"{run.name:<13} {label:<40} {own:>7.3f} {by_grid:>10.3f} {run.seconds:>8.0f} {ratio:>6.2f} "
            f"{(f'{found:.0f} s' if found is not None else '-'):>9}  {'yes' if hit else 'NO'}"
        )
        rows.append(
            {
                "strategy": run.name,
                "winner": label,
                "tokens_per_joule": own,
                "grid_tokens_per_joule": by_grid,
                "measuring_seconds": run.seconds,
                "ratio_to_grid": ratio,
                "found_at_seconds": found,
                "within_noise_of_grid_winner": hit,
                "counts": _counts(run.outcome),
            }
        )
    return rows


def _counts(outcome: SearchOutcome) -> dict[str, int]:
    counts: dict[str, int] = {"not_reached": len(outcome.not_reached)}
    for r in outcome.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def print_replays(
    grid: list[CandidateResult],
    cfg: RunConfig,
    fraction: float,
    seeds: int,
    noise: float,
    roofline: Roofline | None,
) -> list[dict[str, Any]]:
    grid_seconds = sum(r.seconds for r in grid)
    best = select_best(grid)
    assert best is not None
    tolerance = best.objective * (1 - noise)
    print(
        f"\nreplays on the grid's measurements: {seeds} seeds per strategy, budget {fraction:.0%} of "
        f"{grid_seconds:.0f} s; 'hit' = the winner is the grid's or within {noise:.1%} of it"
    )
    header = f"{'strategy':<13} {'hit rate':>8} {'exact':>6} {'mean ratio':>10} {'mean found at':>14} {'worst winner tok/J':>19}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, strategy in STRATEGIES.items():
        hits = exact = 0
        ratios, founds, values = [], [], []
        for seed in range(seeds):
            winner, spent, found = replay(grid, cfg, strategy, fraction * grid_seconds, seed, roofline)
            value = winner.objective if winner else 0.0
            hits += value >= tolerance
            exact += winner is not None and winner.candidate == best.candidate
            ratios.append(spent / grid_seconds)
            values.append(value)
            if found is not None:
                founds.append(found / grid_seconds)
        print(
            f"{name:<13} {hits / seeds:>8.0%} {exact / seeds:>6.0%} {statistics.fmean(ratios):>10.2f} "
            f"{statistics.fmean(founds) if founds else float('nan'):>14.2f} {min(values):>19.3f}"
        )
        rows.append(
            {
                "strategy": name,
                "seeds": seeds,
                "hit_rate": hits / seeds,
                "exact_rate": exact / seeds,
                "mean_ratio": statistics.fmean(ratios),
                "mean_found_at_ratio": statistics.fmean(founds) if founds else None,
                "worst_winner_tokens_per_joule": min(values),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="each strategy's budget / the grid's seconds"
    )
    parser.add_argument("--seeds", type=int, default=30, help="replays per strategy")
    parser.add_argument("--out", type=Path, default=None, help="write everything as JSON")
    parser.add_argument(
        "--replay-only", type=Path, default=None, help="a JSON from an earlier run: replays only"
    )
    args = parser.parse_args()

    from optimizer.cli import _setup_logging

    _setup_logging()
    started = time.perf_counter()
    if args.replay_only:
        saved = json.loads(args.replay_only.read_text())
        grid = [CandidateResult.from_dict(r) for r in saved["grid_history"]]
        cfg = compose_run_config([*SPACE, *PROTOCOL])
        facts = saved["facts"]
        roofline = (
            Roofline(ModelShape(**facts["shape"]), cfg.workload, RooflineRates(**facts["rates"]), cuda=False)
            if facts.get("rates")
            else None
        )
        print_replays(grid, cfg, args.fraction, args.seeds, saved["noise"], roofline)
        return
    with tempfile.TemporaryDirectory(prefix="search-cost-") as folder:
        runs, cfg, roofline, facts = live_runs(args.fraction, Path(folder))
    noise = measurement_noise(runs)
    print(f"\n{facts['model']} on {facts['cpu']}, {energy_source_line(facts['energy_source'])}")
    print(
        f"space: {facts['candidates']} valid candidates ({' '.join(SPACE)}); protocol: {' '.join(PROTOCOL)}"
    )
    live = print_live(runs, noise)
    replays = print_replays(runs[0].history, cfg, args.fraction, args.seeds, noise, roofline)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "facts": facts,
                    "noise": noise,
                    "live": live,
                    "replays": replays,
                    "grid_history": [r.to_dict() for r in runs[0].history],
                    "histories": {run.name: [r.to_dict() for r in run.history] for run in runs[1:]},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
