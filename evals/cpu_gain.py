"""CPU gain benchmark: the careless default vs a recipe, side by side in one process.

All run the recipe's own workload under the same energy meter, interleaved, in alternating order
(D M R, R M D, ...) so that machine drift and warm caches favour neither side. D is the default (HF
eager in the checkpoint's dtype, batch 1); M the default's numerics at the recipe's batch, which
splits the gain into what batching bought and what the rest bought; R the recipe. Prints tokens
per joule of each, round by round, and the ratios over every round, with how many rounds each side
met the SLO. tokens/J = tok/s / W, so the output prints each side's measured watts and how far the
tokens/J ratio is from the throughput ratio.

    python evals/cpu_gain.py                                   # recipes/smollm2-135m/recipe.yaml
    python evals/cpu_gain.py --recipe outputs/<run>/recipe.yaml --rounds 3 --out result.json
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

from optimizer.config import QUALITY_REFERENCES, SpaceConfig  # noqa: E402
from optimizer.measure.energy import measure_idle_watts  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.recipe import check_weights, default_cache_dir, model_config_for, read_recipe  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402
from optimizer.space import baseline_candidate  # noqa: E402

DEFAULT_RECIPE = REPO / "recipes" / "smollm2-135m" / "recipe.yaml"
POWER_TOLERANCE = 0.05  # watts within 5% of each other: "about equal"


def gain(recipe: dict[str, Any], default: dict[str, Any]) -> float | None:
    """Goodput tokens/J of the recipe over the default's; None when the default's goodput is 0
    (it missed the SLO)."""
    base = default["goodput_tokens_per_joule"]
    return recipe["goodput_tokens_per_joule"] / base if base > 0 else None


def mean_goodput_ratio(rounds: list[dict[str, Any]]) -> float | None:
    """The recipe's mean goodput tokens/J over the default's, every round counted (as the table
    averages them): a round where the default's goodput is 0 counts as 0, not dropped from both
    sides, which kept only the rounds that favour the default. None when it is 0 in every round."""
    base = statistics.fmean(r["baseline"]["goodput_tokens_per_joule"] for r in rounds)
    recipe = statistics.fmean(r["recipe"]["goodput_tokens_per_joule"] for r in rounds)
    return recipe / base if base > 0 else None


def slo_rounds(rounds: list[dict[str, Any]], name: str) -> str:
    return f"{sum(bool(r[name]['slo_met']) for r in rounds)} of {len(rounds)}"


def power_note(recipe_watts: float, default_watts: float, estimate: bool) -> str:
    """tokens/J = tok/s / W: how far the tokens/J ratio is from the throughput ratio, from the
    watts each side drew (the CPU-time estimate's watts differ too: busy cores, not all cores)."""
    scale = default_watts / recipe_watts
    what = "the CPU-time ESTIMATE's" if estimate else "measured"
    verdict = (
        "about equal: the tokens/J ratios are essentially throughput ratios"
        if abs(scale - 1) <= POWER_TOLERANCE
        else f"not equal: the tokens/J ratios are the throughput ratios x {scale:.2f} (default W / recipe W)"
    )
    return f"NOTE: {what} power: recipe {recipe_watts:.1f} W, default {default_watts:.1f} W; {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (each measures both)")
    parser.add_argument("--min-window-seconds", type=float, default=None, help="override the recipe's")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and ratios as JSON")
    args = parser.parse_args()

    from optimizer.cli import _setup_logging

    _setup_logging()
    recipe = read_recipe(args.recipe)
    workload = recipe.workload
    if args.min_window_seconds is not None:
        workload = replace(workload, min_window_seconds=args.min_window_seconds)
    cache = default_cache_dir()
    setup = prepare_measurement(
        model_config_for(recipe, None),
        recipe.target,  # with the estimate coefficients the recipe was measured with
        workload,
        recipe.quality,
        cache,
        max(recipe.candidate.batch_size, 16),
    )
    check_weights(recipe, setup.model.weight_sha256)  # the gain is only meaningful on the same weights
    # HF eager batch 1 in the checkpoint's dtype (fp32 for SmolLM2's conversion), all cores
    default = baseline_candidate(
        SpaceConfig(), setup.target, checkpoint_precision=setup.model.shape.checkpoint_precision
    )
    tuned = recipe.candidate
    sides = {
        "baseline": default,
        "batch-matched": replace(default, batch_size=tuned.batch_size),
        "recipe": tuned,
    }
    if tuned.batch_size == default.batch_size:
        del sides["batch-matched"]
    idle = measure_idle_watts(setup.meter, workload.idle_seconds)
    evaluator = Evaluator.for_setup(setup)
    rounds: list[dict[str, Any]] = []
    results = {}
    for index in range(args.rounds):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for name in order:  # measured even if the bound broke: shown
            results[name] = evaluator.evaluate(sides[name], role="baseline")
        row = {name: measured_row(results[name]) for name in sides}
        ratio = gain(row["recipe"], row["baseline"])
        rounds.append(row | {"goodput_ratio": ratio, "order": order})
        print(
            f"round {index + 1} ({' '.join(order)}): "
            + ", ".join(f"{n} {row[n]['goodput_tokens_per_joule']:.3f}" for n in sides)
            + " goodput tok/J -> "
            + (f"{ratio:.1f}x" if ratio is not None else "default missed the SLO (goodput 0)"),
            flush=True,
        )
    quality = results["recipe"].quality
    ratio = mean_goodput_ratio(rounds)
    per_round = [r["goodput_ratio"] for r in rounds]
    throughput_tpj = [r["recipe"]["tokens_per_joule"] / r["baseline"]["tokens_per_joule"] for r in rounds]
    throughput = [r["recipe"]["tokens_per_second"] / r["baseline"]["tokens_per_second"] for r in rounds]
    sources = energy_sources(row for r in rounds for row in (r[name] for name in sides))
    watts = {name: statistics.fmean(r[name]["watts"] for r in rounds) for name in sides}
    print()
    print(
        f"model {setup.model.name} on {setup.target.cpu_model} ({setup.target.cores} cores); idle {idle:.1f} W"
    )
    print(energy_source_line(sources))
    print(f"means over all {len(rounds)} rounds; SLO met: rounds where the side met the SLO")
    print(
        f"{'':<10} {'settings':<44} {'goodput tok/J':>14} {'tok/s':>9} {'W':>7} {'TPOT p90 ms':>12} {'SLO met':>8}"
    )
    for name in sides:
        values = [r[name] for r in rounds]
        print(
            f"{name:<10} {values[0]['label']:<44} "
            f"{statistics.fmean(v['goodput_tokens_per_joule'] for v in values):>14.3f} "
            f"{statistics.fmean(v['tokens_per_second'] for v in values):>9.1f} "
            f"{watts[name]:>7.1f} "
            f"{statistics.fmean(v['tpot_p90_ms'] for v in values):>12.0f} "
            f"{slo_rounds(rounds, name):>8}"
        )
    if quality is not None:
        broken = quality.violations(recipe.quality)
        print(
            f"recipe quality vs {QUALITY_REFERENCES[recipe.quality.reference]}: "
            f"ppl {quality.ppl_increase:+.2%}, top-1 {quality.top1_agreement:.1%}, "
            f"KL {quality.mean_kl:.4f} -> {'inside' if not broken else 'OUTSIDE'} the recipe's bound"
        )
    counted = (
        f"all {len(rounds)} rounds; SLO met by the default in {slo_rounds(rounds, 'baseline')}, "
        f"the recipe in {slo_rounds(rounds, 'recipe')}"
    )
    if ratio is not None:
        listed = ", ".join(f"{r:.1f}x" if r is not None else "n/a (default goodput 0)" for r in per_round)
        print(
            f"RATIO goodput tokens/J recipe / default: {ratio:.1f}x "
            f"(mean over {counted}; rounds: {listed}); throughput ratio {statistics.fmean(throughput):.1f}x"
        )
    else:  # the default's goodput was 0 in every round: compare all tokens instead
        print(
            f"RATIO tokens/J (all tokens; the default's goodput is 0 in every round) recipe / default: "
            f"{statistics.fmean(throughput_tpj):.1f}x ({counted}); throughput ratio {statistics.fmean(throughput):.1f}x"
        )
    if "batch-matched" in sides:
        matched = [r["recipe"]["tokens_per_joule"] / r["batch-matched"]["tokens_per_joule"] for r in rounds]
        print(
            f"RATIO tokens/J recipe / the default's numerics at the recipe's batch {tuned.batch_size}: "
            f"{statistics.fmean(matched):.1f}x "
            "(the gain that is not batching)"
        )
    print(power_note(watts["recipe"], watts["baseline"], "estimate" in sources))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"recipe": str(args.recipe), "idle_watts": idle, "rounds": rounds}, indent=1)
        )


if __name__ == "__main__":
    main()
