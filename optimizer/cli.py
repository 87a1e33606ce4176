"""The `optimize` command: a thin shell that composes the config and calls the API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from optimizer.errors import UserError

HELP = """\
usage: optimize [GROUP=PRESET | KEY=VALUE ...]       search, measure, write recipe + report
       optimize verify RECIPE [--tolerance F] [--model SOURCE]
       optimize --show-config [OVERRIDES ...]       print the composed configuration

Groups and presets (conf/ inside the package):
{groups}

Examples:
  optimize                                           # packaged SmolLM2, this machine, cpu-default space
  optimize model=/path/to/hf-dir quality=strict search.budget_minutes=20 workload.max_new_tokens=64
  optimize search=optuna search.budget_minutes=10               # TPE: a fraction of the grid's time
  optimize search=optuna search.workers=4 launcher=ray           # 4 Ray tasks, one GPU each
  optimize verify outputs/<run>/recipe.yaml

Exit codes: 0 ok, 1 verify failed, 2 bad input or nothing feasible.
"""


def _help() -> str:
    from optimizer.config import group_options

    groups = "\n".join(
        f"  {g:<11} {', '.join(group_options(g))}"
        for g in ("model", "target", "space", "search", "workload", "quality", "accounting", "launcher")
    )
    return HELP.format(groups=groups)


def _setup_logging() -> None:
    from optimizer.logs import setup_logging

    setup_logging()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        if args[:1] == ["verify"]:
            return _verify(args[1:])
        if any(a in ("-h", "--help") for a in args):
            print(_help())
            return 0
        return _optimize(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished candidates are in the store; run the same command to resume",
            file=sys.stderr,
        )
        return 130


def _optimize(args: list[str]) -> int:
    from optimizer.config import compose_run_config

    show = "--show-config" in args
    cfg = compose_run_config([a for a in args if a != "--show-config"])
    if show:
        from dataclasses import asdict

        import yaml

        print(yaml.safe_dump(asdict(cfg), sort_keys=False))
        return 0
    from optimizer.pipeline import optimize

    result = optimize(cfg)
    if result.dry_run is not None:
        print(
            f"dry run: nothing was submitted; the sbatch file and the workers' jobs are in {result.dry_run}"
        )
        return 0
    print(f"report:  {result.output_dir / 'report.md'}")
    if result.infeasible is not None:
        print(f"error: {result.infeasible}", file=sys.stderr)
        return 2
    assert result.best is not None and result.recipe_path is not None and result.baseline is not None
    gain = ""
    if result.baseline.objective > 0:
        gain = f" ({result.best.objective / result.baseline.objective:.1f}x the baseline)"
    source = result.best.performance.source if result.best.performance else "?"
    print(f"recipe:  {result.recipe_path}")
    print(
        f"best:    {result.best.candidate.label()}: {result.best.objective:.3f} goodput tok/J [{source}]{gain}"
    )
    return 0


def _verify(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optimize verify", description="Re-measure a recipe here and compare."
    )
    parser.add_argument("recipe")
    parser.add_argument(
        "--tolerance", type=float, default=0.25, help="allowed drop in goodput tok/J (fraction)"
    )
    parser.add_argument("--model", default=None, help="the recipe's weights at another path")
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not 0 <= ns.tolerance < 1:
        raise UserError("--tolerance", f"is {ns.tolerance}", "give a fraction in [0, 1), e.g. 0.25")
    from optimizer.verify import verify_recipe

    report = verify_recipe(ns.recipe, tolerance=ns.tolerance, model_source=ns.model)
    print(report.render())
    return 0 if report.passed else 1
