"""Parallelism on this machine: one process on all cores vs replicas vs tensor-parallel ranks.

At a matched total batch (every layout serves the same requests at once), interleaved round by
round (A B C A B C ...) so that machine drift hits all alike, under the same energy meter (on a
CPU without RAPL, the labelled estimate: the CPU time of every process of the layout):

    1 process x all threads     one engine, torch's threads over every core
    N replicas x 1 thread       N engine processes, each pinned to its own core, the batch split
    TP N ranks x 1 thread       one engine sharded over N gloo ranks (transformers' TP plan)

N is the number of cores (or --processes). A layout the rules exclude (SmolLM2-135M has 9
attention and 3 key-value heads: 2 ranks cannot split them) is printed with the reason and not
measured; `--tp-degree 3 --oversubscribe` measures 3 ranks x 1 thread on 2 cores instead (the
rules are then checked as if the machine had enough cores; the row says so). The last line is
`RATIO best layout vs 1 process x all threads: N.Nx` (goodput tokens/J).

    python evals/parallelism.py --out evals/results/<date>-parallelism/parallelism.json
    python evals/parallelism.py --batch 32 --rounds 3 workload=offline     # Hydra overrides last
    python evals/parallelism.py workload=chat                             # the serving stream
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import energy_source_line, energy_sources, measured_row  # noqa: E402

from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.energy import measure_idle_watts  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.recipe import default_cache_dir  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402
from optimizer.search.prefilter import memory_fit_reason  # noqa: E402
from optimizer.space import Candidate, TorchSettings, exclusion_reason  # noqa: E402

ONE_PROCESS = "1 process x all threads"


def layouts(base: Candidate, processes: int, tp_degree: int) -> dict[str, Candidate]:
    """The compared layouts at the base candidate's batch, in the order measured."""
    return {
        ONE_PROCESS: replace(base, threads=processes),
        f"{processes} replicas x 1 thread": replace(base, threads=1, replicas=processes),
        f"TP {tp_degree} ranks x 1 thread": replace(base, threads=1, tensor_parallel=tp_degree),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16, help="total batch of every layout")
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 where native)")
    parser.add_argument("--processes", type=int, default=None, help="replicas and ranks (default: the cores)")
    parser.add_argument(
        "--tp-degree", type=int, default=None, help="tensor-parallel ranks (default: --processes)"
    )
    parser.add_argument(
        "--oversubscribe", action="store_true", help="allow more rank processes than cores (marked)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write every row as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default workload=quick)")
    args = parser.parse_args()

    from optimizer.cli import _setup_logging

    _setup_logging()
    cfg = compose_run_config(["workload=quick", *args.overrides])
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, default_cache_dir(), max(args.batch, 16)
    )
    target, shape = setup.target, setup.model.shape
    if target.is_cuda:
        raise SystemExit(
            "this comparison is for a CPU target (target=cpu); GPUs: space.replicas/tensor_parallel"
        )
    processes = args.processes or target.cores
    precision = args.precision or ("bf16" if target.bf16 else "fp32")
    base = Candidate(TorchSettings(precision=precision), batch_size=args.batch, threads=processes)
    compared = layouts(base, processes, args.tp_degree or processes)
    runnable: dict[str, Candidate] = {}
    for name, candidate in list(compared.items()):
        ruled = target
        if args.oversubscribe and candidate.processes > target.cores:
            ruled = replace(target, cores=candidate.processes)
            del compared[name]
            name = f"{name} (oversubscribed: {candidate.processes} on {target.cores} cores)"
            compared[name] = candidate
        reason = exclusion_reason(candidate, ruled, cfg.workload.serving, shape) or memory_fit_reason(
            candidate, shape, target, cfg.workload
        )
        if reason:
            print(f"{name}: excluded ({candidate.label()}): {reason}", flush=True)
        else:
            runnable[name] = candidate
    idle = measure_idle_watts(setup.meter, cfg.workload.idle_seconds)
    evaluator = Evaluator.for_setup(setup)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runnable}
    failures: dict[str, str] = {}
    for index in range(args.rounds):
        for name, candidate in runnable.items():
            if name in failures:
                continue
            result = evaluator.evaluate(candidate, role="baseline")  # measured even outside the bound
            if result.performance is None:
                failures[name] = str(result.reason)
                print(f"round {index + 1}: {name}: not measured: {result.reason}", flush=True)
                continue
            row = measured_row(result)
            rows[name].append(row)
            print(
                f"round {index + 1}: {name:<28} {row['goodput_tokens_per_joule']:8.3f} goodput tok/J "
                f"{row['tokens_per_second']:8.1f} tok/s {row['watts']:6.1f} W",
                flush=True,
            )
    print()
    print(f"model {setup.model.name} on {target.cpu_model} ({target.cores} cores); idle {idle:.1f} W")
    print(
        f"total batch {args.batch}, {precision}, workload {cfg.workload.kind}: prompt {cfg.workload.prompt_tokens}, new {cfg.workload.max_new_tokens}"
    )
    measured = {name: values for name, values in rows.items() if values}
    if measured:
        print(energy_source_line(energy_sources(v for values in measured.values() for v in values)))
    width = max([28, *(len(name) for name in measured)])
    print(
        f"{'layout':<{width}} {'settings':<40} {'goodput tok/J':>14} {'tok/J':>8} {'tok/s':>8} {'W':>7} {'TPOT p90 ms':>12}"
    )
    means: dict[str, float] = {}
    for name, values in measured.items():
        means[name] = statistics.fmean(v["goodput_tokens_per_joule"] for v in values)
        print(
            f"{name:<{width}} {values[0]['label']:<40} {means[name]:>14.3f} "
            f"{statistics.fmean(v['tokens_per_joule'] for v in values):>8.3f} "
            f"{statistics.fmean(v['tokens_per_second'] for v in values):>8.1f} "
            f"{statistics.fmean(v['watts'] for v in values):>7.1f} "
            f"{statistics.fmean(v['tpot_p90_ms'] for v in values):>12.0f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"idle_watts": idle, "rows": rows, "failures": failures}, indent=1))
    for line in ratio_lines(means):
        print(line)


def ratio_lines(means: dict[str, float]) -> list[str]:
    """The closing lines. A baseline not measured (excluded or failed) fails the run: exit status 1,
    not a 0 that reads as a result."""
    if ONE_PROCESS not in means:
        raise SystemExit(
            f"RATIO best layout vs {ONE_PROCESS}: none: that layout was not measured (excluded or failed, above)"
        )
    if means[ONE_PROCESS] <= 0:  # measured: a result, not a failure
        return [f"RATIO best layout vs {ONE_PROCESS}: n/a (one process met no SLO: goodput 0)"]
    best = max(means, key=lambda name: means[name])
    return [
        f"best layout: {best}",
        f"RATIO best layout vs {ONE_PROCESS}: {means[best] / means[ONE_PROCESS]:.1f}x",
    ]


if __name__ == "__main__":
    main()
