"""Backends benchmark: the best candidate of each backend vs the HF eager default, side by side.

Phase 1 searches a space with several backends (`optimize`, resumable through its store) and
takes the best feasible candidate of each backend. Phase 2 re-measures those winners and the
default (HF eager in the checkpoint's dtype, batch 1, all cores) in this one process, interleaved
round by round (D A B C, D A B C, ...) so that machine drift hits all alike, and prints tokens/J,
tokens/s, quality and the ratios to the default. The torch row's ratio is the torch-only gain; the
best row's ratio is the gain with ONNX Runtime and llama.cpp in the space. With llama.cpp installed,
phase 2 also measures llama.cpp out of the box (`llamacpp-oob`: the GGUF as shipped, the
library's default threads and batch sizes, one sequence at a time, f16 KV) and the last lines
compare the selected candidate with it and the best llama.cpp candidate with the best torch one.

    python evals/backends.py                                   # space=cpu-ort + llamacpp, offline batches
    python evals/backends.py --rounds 3 --out result.json space.batch_sizes=[1,8] workload=quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import energy_source_line, energy_sources, measured_row  # noqa: E402

from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.energy import measure_idle_watts  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.pipeline import optimize  # noqa: E402
from optimizer.report.backend_table import best_per_backend  # noqa: E402
from optimizer.results import CandidateResult  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402
from optimizer.space import Candidate, baseline_candidate  # noqa: E402

DEFAULT_OVERRIDES = [
    "space=cpu-ort",
    # offline batches, as recorded before (the default workload is now a request stream: evals/serving.py)
    "workload=batch",
    "workload.min_window_seconds=3",
    "workload.repeats=2",
    # llama.cpp beside torch and ONNX Runtime (excluded with the reason when not installed)
    "space.backends=[torch,ort-genai,ort-onnx,llamacpp]",
    "space.llamacpp.weight_types=[gguf,Q8_0,Q4_K_M]",
    "space.llamacpp.kv_types=[f16,q8_0]",
]
# llama.cpp as a user would first run it: the library's own defaults (threads 0: its default count)
LLAMACPP_OUT_OF_THE_BOX = {
    "backend": "llamacpp",
    "batch_size": 1,
    "threads": 0,
    "n_batch": 2048,
    "n_ubatch": 512,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of phase 2")
    parser.add_argument("--out", type=Path, default=None, help="write every row and ratio as JSON")
    parser.add_argument("--run-dir", type=Path, default=REPO / "outputs" / "backends-benchmark")
    parser.add_argument(
        "overrides", nargs="*", help=f"Hydra overrides, after these defaults: {' '.join(DEFAULT_OVERRIDES)}"
    )
    args = parser.parse_args()

    from optimizer.cli import _setup_logging

    _setup_logging()
    overrides = [
        *DEFAULT_OVERRIDES,  # the user's overrides come later and win
        *args.overrides,
        f"output_dir={args.run_dir / 'search'}",
        f"store_path={args.run_dir / 'trials.db'}",
    ]
    cfg = compose_run_config(overrides)
    started = time.perf_counter()
    search = optimize(cfg)  # phase 1: resumable through the store
    search_seconds = time.perf_counter() - started
    # the default is what every winner is compared with, never a winner itself
    contestants = [r for r in search.results if r.role != "baseline"]
    winners = {b: r for b, r in best_per_backend(contestants).items() if r is not None}
    if not winners:
        raise SystemExit(f"no feasible candidate in the space: {search.infeasible}")

    setup = prepare_measurement(
        cfg.model,
        cfg.target,
        cfg.workload,
        cfg.quality,
        Path(cfg.cache_dir).expanduser(),
        max([*(r.candidate.batch_size for r in winners.values()), 16]),
    )
    default = baseline_candidate(
        cfg.space, setup.target, checkpoint_precision=setup.model.shape.checkpoint_precision
    )
    idle = measure_idle_watts(setup.meter, cfg.workload.idle_seconds)
    evaluator = Evaluator.for_setup(setup)
    contenders: dict[str, Candidate] = {"default": default} | {b: r.candidate for b, r in winners.items()}
    # default: the project's careless default (HF eager batch 1 in the checkpoint's dtype, all cores)
    if "llamacpp" in winners:
        contenders["llamacpp-oob"] = Candidate.from_dict(LLAMACPP_OUT_OF_THE_BOX)
    if not setup.target.is_cuda and default.threads > 1:
        # torch's OpenMP threads collapse when another process holds a core: show the default at
        # one thread too, so that a gain from contention is not mistaken for a backend's
        contenders["default-1t"] = replace(default, threads=1)
    rounds: list[dict[str, dict[str, Any]]] = []
    for index in range(args.rounds):  # phase 2: side by side, interleaved
        measured = {
            name: measured_row(evaluator.evaluate(c, role="baseline")) for name, c in contenders.items()
        }
        rounds.append(measured)
        base = measured["default"]["goodput_tokens_per_joule"]
        print(
            f"round {index + 1}: "
            + ", ".join(f"{n} {m['goodput_tokens_per_joule']:.3f}" for n, m in measured.items())
            + f" goodput tok/J (default {base:.3f})",
            flush=True,
        )
    summary = summarize(rounds, contenders)
    print_table(summary, setup, idle, search_seconds, cfg.quality)
    if args.out:
        payload = {
            "overrides": overrides,
            "idle_watts": idle,
            "search_seconds": search_seconds,
            "search_counts": _counts(search.results),
            "quality_bound": asdict(cfg.quality),
            "workload": asdict(cfg.workload),
            "rounds": rounds,
            "summary": summary,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=str))


def summarize(
    rounds: list[dict[str, dict[str, Any]]], contenders: dict[str, Candidate]
) -> dict[str, dict[str, Any]]:
    """Means over rounds, and each contender's ratios to the default within the same round."""

    def ratios(name: str, key: str) -> list[float]:
        return [r[name][key] / r["default"][key] for r in rounds if r["default"][key] > 0]

    summary = {}
    for name in contenders:
        values = [r[name] for r in rounds]
        # means over every round, as the table's: a round where the default's goodput is 0
        # (it missed the SLO) counts, where a mean of per-round ratios would have dropped it
        default_goodput = statistics.fmean(r["default"]["goodput_tokens_per_joule"] for r in rounds)
        mean_goodput = statistics.fmean(v["goodput_tokens_per_joule"] for v in values)
        summary[name] = {
            **{k: v for k, v in values[0].items() if not isinstance(v, float)},
            **{
                k: statistics.fmean(v[k] for v in values)
                for k, v in values[0].items()
                if isinstance(v, float)
            },
            # not the first round's: a meter may change source (or the SLO verdict) between rounds
            "sources": energy_sources(values),
            "slo_met": [v.get("slo_met") for v in values],
            "tokens_per_joule_ratio": statistics.fmean(ratios(name, "tokens_per_joule")),
            "tokens_per_joule_ratio_rounds": ratios(name, "tokens_per_joule"),
            "goodput_ratio": mean_goodput / default_goodput if default_goodput > 0 else None,
            "goodput_ratio_rounds": ratios(name, "goodput_tokens_per_joule"),
            "throughput_ratio": statistics.fmean(ratios(name, "tokens_per_second")),
        }
    return summary


def print_table(
    summary: dict[str, dict[str, Any]], setup: Any, idle: float, search_seconds: float, bound: Any
) -> None:
    target = setup.target
    print()
    print(
        f"model {setup.model.name} on {target.cpu_model} ({target.cores} cores); idle {idle:.1f} W; search {search_seconds:.0f} s"
    )
    print(energy_source_line(energy_sources(summary.values())))
    print(
        f"quality bound: ppl <= +{bound.max_ppl_increase:.0%}, top-1 >= {bound.min_top1_agreement:.0%}, KL <= {bound.max_kl}"
    )
    print(
        f"{'':<12} {'candidate':<40} {'tok/J':>7} {'goodput':>7} {'tok/s':>7} {'TPOT p90':>8} {'ppl':>7} {'top-1':>6} "
        f"{'KL':>7} {'x tok/J':>8} {'x goodput':>9} {'x tok/s':>8}"
    )
    for name, s in summary.items():
        goodput = f"{s['goodput_ratio']:.2f}x" if s["goodput_ratio"] is not None else "n/a"
        print(
            f"{name:<12} {s['label']:<40} {s['tokens_per_joule']:>7.3f} {s['goodput_tokens_per_joule']:>7.3f} "
            f"{s['tokens_per_second']:>7.1f} {s['tpot_p90_ms']:>6.0f}ms {s['ppl_increase']:>+7.2%} {s['top1_agreement']:>6.1%} "
            f"{s['mean_kl']:>7.4f} {s['tokens_per_joule_ratio']:>7.2f}x {goodput:>9} {s['throughput_ratio']:>7.2f}x"
        )
    others = [n for n in summary if not n.startswith("default") and n != "llamacpp-oob"]
    best = max(others, key=lambda n: summary[n]["goodput_tokens_per_joule"])
    parts = [f"best overall ({best}) {summary[best]['tokens_per_joule_ratio']:.2f}x"]
    if "torch" in summary:
        parts.insert(0, f"torch-only best {summary['torch']['tokens_per_joule_ratio']:.2f}x")
    print("RATIO tokens/J vs the default: " + ", ".join(parts))
    if "default-1t" in summary:
        one = summary["default-1t"]["tokens_per_joule"]
        against = ", ".join(f"{n} {summary[n]['tokens_per_joule'] / one:.2f}x" for n in others)
        print(f"RATIO tokens/J vs the default at one thread: {against}")
    if "llamacpp-oob" in summary:
        oob = summary["llamacpp-oob"]["goodput_tokens_per_joule"]
        ratio = summary[best]["goodput_tokens_per_joule"] / oob if oob > 0 else float("inf")
        print(f"RATIO selected ({best}) vs llamacpp out of the box: {ratio:.1f}x goodput tokens/J")
    if "llamacpp" in summary and "torch" in summary:
        torch_best = summary["torch"]["goodput_tokens_per_joule"]
        ratio = (
            summary["llamacpp"]["goodput_tokens_per_joule"] / torch_best if torch_best > 0 else float("inf")
        )
        print(f"RATIO llamacpp best vs torch best: {ratio:.1f}x")


def _counts(results: list[CandidateResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = f"{r.candidate.backend}:{r.status}"
        counts[key] = counts.get(key, 0) + 1
    return counts


if __name__ == "__main__":
    main()
