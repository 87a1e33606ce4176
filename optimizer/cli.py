"""The `optimize` command: a thin shell that composes the config and calls the API."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from optimizer.errors import UserError
from optimizer.interrupts import sigterm_interrupts

HELP = """\
usage: optimize [--config-dir DIR] [GROUP=PRESET | KEY=VALUE ...]   search, measure, write recipe + report
       optimize verify RECIPE [--tolerance F] [--model SOURCE] [--cache-dir DIR]
       optimize [--config-dir DIR] --show-config [OVERRIDES ...]    print the composed configuration

--config-dir DIR: a folder of your own presets, one folder per group (DIR/space/mymodel.yaml,
DIR/workload/chat.yaml ...), searched before the packaged ones; a preset of yours replaces a
packaged preset of the same name. Default: ${env}, when set.

{source}
{groups}

Examples:
  optimize                                           # packaged SmolLM2, this machine, a chat stream
                                                     # (space=gpu-default workload=gpu-chat on a GPU)
  optimize model=/path/to/hf-dir quality=strict search.budget_minutes=20 workload.rate=4
  optimize search=optuna search.budget_minutes=10               # TPE: a fraction of the grid's time
  optimize search=optuna search.workers=4 launcher=ray           # 4 Ray tasks, one GPU each
  optimize --config-dir conf space=mymodel workload=mychat       # presets of a model's repository
  optimize verify outputs/<run>/recipe.yaml

Exit codes: 0 ok, 1 verify failed, 2 bad input, nothing feasible, or a recipe measured under
other conditions (device, protocol, inputs) than verify finds here, 3 crashed (a bug: the
traceback is on stderr), 4 a candidate hung past search.candidate_timeout_minutes (recorded
failed: run the same command to resume), 130 interrupted (Ctrl-C, SIGTERM).
"""

# Not 1: a CI running `optimize verify` must tell a crashed tool from a recipe that failed.
CRASHED = 3


def _help(config_dir: Path | None) -> str:
    from optimizer.config import CONFIG_DIR_ENV, GROUPS, Preset, presets

    def shown(preset: Preset) -> str:
        if preset.replaces_packaged:
            return f"{preset.name} (yours, replaces the packaged one)"
        return f"{preset.name} (yours)" if preset.user else preset.name

    groups = "\n".join(f"  {g:<11} {', '.join(shown(p) for p in presets(g, config_dir))}" for g in GROUPS)
    source = (
        "Groups and presets (conf/ inside the package):"
        if config_dir is None
        else f"Groups and presets (conf/ inside the package, and yours from {config_dir}, searched first):"
    )
    return HELP.format(env=CONFIG_DIR_ENV, source=source, groups=groups)


def _print(text: str, end: str = "\n") -> None:
    """`text` on stdout. A reader that stopped reading (`optimize --show-config | head -1`) is no
    error: the exit code stays the command's (verify's 0 must not read as its 1, failed)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        # what is still buffered goes nowhere: the interpreter's own flush at exit would fail too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _setup_logging() -> None:
    from optimizer.logs import setup_logging

    setup_logging()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        with sigterm_interrupts():
            return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args[:1] == ["verify"]:  # verify keeps nothing: a re-run measures from the start
            print("interrupted: nothing was verified; run the same command again", file=sys.stderr)
        else:
            print(
                "interrupted: finished candidates are in the store; run the same command to resume",
                file=sys.stderr,
            )
        return 130
    except Exception:  # SystemExit passes: it carries its own code
        traceback.print_exc()
        print(
            f"error: optimize crashed (exit {CRASHED}): a bug; the traceback above says where",
            file=sys.stderr,
        )
        return CRASHED


def _run(args: list[str]) -> int:
    if args[:1] == ["verify"]:
        return _verify(args[1:])
    args, config_dir = _take_config_dir(args)
    if any(a in ("-h", "--help") for a in args):
        _print(_help(config_dir))
        return 0
    if "verify" in args:  # after --config-dir or a setting: the command, in the wrong place
        after = args[args.index("verify") + 1 :]
        raise UserError(
            "verify",
            "comes first: verify takes no --config-dir or key=value settings",
            f"optimize verify {shlex.join(after) if after else 'RECIPE'}",
        )
    return _optimize(args, config_dir)


def _take_config_dir(args: list[str]) -> tuple[list[str], Path | None]:
    """The arguments without `--config-dir DIR` (or `--config-dir=DIR`), and the user's config
    directory: the flag's (the last one given), else WATTSMITH_CONFIG_DIR's, else None."""
    from optimizer.config import config_dir_from

    rest: list[str] = []
    flag: str | None = None
    items = iter(args)
    for arg in items:
        name, sep, value = arg.partition("=")
        if name != "--config-dir":
            rest.append(arg)
            continue
        flag = value if sep else next(items, None)
        if flag is None:
            raise UserError(
                "--config-dir", "needs a directory", "e.g. optimize --config-dir conf workload=chat"
            )
    return rest, config_dir_from(flag, os.environ)


def _optimize(args: list[str], config_dir: Path | None) -> int:
    from optimizer.target_defaults import compose_for_target

    show = "--show-config" in args
    cfg = compose_for_target([a for a in args if a != "--show-config"], config_dir=config_dir)
    if show:
        import yaml

        _print(yaml.safe_dump(cfg.settings(), sort_keys=False))
        return 0
    from optimizer.pipeline import claim_output_dir, optimize
    from optimizer.results import ratio_text, sig3

    result = optimize(claim_output_dir(cfg))  # optimize() claims too: a claimed dir is kept as is
    if result.dry_run is not None:
        _print(
            f"dry run: nothing was submitted; the sbatch file and the workers' jobs are in {result.dry_run}"
        )
        return 0
    _print(f"report:  {result.output_dir / 'report.md'}")
    if result.infeasible is not None:
        print(f"error: {result.infeasible}", file=sys.stderr)
        return 2
    assert result.best is not None and result.recipe_path is not None and result.baseline is not None
    gain = ""
    if result.baseline.objective > 0:
        ratio = result.best.objective / result.baseline.objective
        gain = f" ({ratio_text(ratio)}x the baseline{': below it' if ratio < 1 else ''})"
    source = result.best.performance.source if result.best.performance else "?"
    _print(f"recipe:  {result.recipe_path}")
    _print(
        f"best:    {result.best.candidate.label()}: {sig3(result.best.objective)} goodput tok/J [{source}]{gain}"
    )
    return 0


def _verify(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optimize verify", description="Re-measure a recipe here and compare."
    )
    parser.add_argument("recipe")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.25,
        help="allowed drop in goodput tok/J (fraction); a rise above 1/(1 - tolerance) fails too",
    )
    parser.add_argument("--model", default=None, help="the recipe's weights at another path")
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="the cache optimize's cache_dir names: converted models, built engines, file hashes "
        "(default: $WATTSMITH_CACHE, else ~/.cache/wattsmith)",
    )
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:
        _print("", end="")  # -h's text, flushed here
        return 2 if exc.code else 0
    if not 0 <= ns.tolerance < 1:
        raise UserError("--tolerance", f"is {ns.tolerance}", "give a fraction in [0, 1), e.g. 0.25")
    if ns.cache_dir is not None and not ns.cache_dir.strip():  # as an empty cache_dir is refused
        raise UserError("--cache-dir", "is empty", "give a directory, e.g. --cache-dir ~/.cache/wattsmith")
    if ns.model is not None and not ns.model.strip():  # `--model "$UNSET"`: not the recipe's own weights
        raise UserError(
            "--model", "is empty", "give the weights' directory or .gguf file, or leave --model out"
        )
    from optimizer.verify import verify_recipe

    cache_dir = Path(ns.cache_dir).expanduser() if ns.cache_dir is not None else None
    report = verify_recipe(ns.recipe, tolerance=ns.tolerance, model_source=ns.model, cache_dir=cache_dir)
    _print(report.render())
    if not report.measured:
        return 2
    return 0 if report.passed else 1
