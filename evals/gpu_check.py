"""GPU checks, one section per process, on the lent NVIDIA machine (driven by evals/gpu_check.sh).

    python evals/gpu_check.py SECTION --out DIR [--gguf FILE | --tokenizer DIR] [--budget-seconds N] [--cpu-smoke]
    python evals/gpu_check.py summary --out DIR

Each section writes DIR/<section>.json (a failure is recorded there too) and runs in its own
process, so that a CUDA error or a hang in one (the shell script times each out) leaves the
others measurable. Sections:

  env       GPU, driver, library versions, target fingerprint
  profile   kernel-time tables of the captured decode step (Qwen2-0.5B shape, sdpa_gqa, batch 1024
            then 512) and of one prefill, compiled and eager side by side (SDPA with repeated K/V:
            evals/results/2026-12-04-h200-gpu-check/profile.md)
  qwen      `optimize` on the Qwen2-0.5B shape (random weights, quality bound off): the plain-HF
            plateau, the captured loop with each decode fix, static fp8, continuous batching
  llama8b   a Llama-3.1-8B-shaped model (random weights) built in memory: plain HF static cache
            (the baseline) vs the captured loop in bf16 and static fp8, measured by the same code;
            each loop row's captured step and prefill profiled after it (profile-llama8b.md)
  smollm2   `optimize` on SmolLM2-135M (real weights): the quality bound on static/dynamic fp8,
            bf16 and the continuous-batching engine
  serving   `optimize` with the GPU defaults (space=gpu-default, workload=gpu-chat: a request
            stream) on the Qwen2-0.5B shape: the slot loop (captured step, continuous admission)
            and transformers' continuous batching vs the baseline, so that the GPU recipe is a
            serving recipe
  ort       onnxruntime-gpu (CUDA EP) and onnxruntime-genai-cuda candidates, when installed

`summary` merges the sections into gpu_check.json and prints the table (goodput tokens/J, ratio to
each section's plain-HF reference measured in the same call, fraction of the energy roofline).
`--cpu-smoke` runs the same code paths with tiny shapes on a CPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Published shapes; weights are random (these sections measure speed and energy only).
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
LLAMA31_8B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
# Energy per matmul FLOP on this GPU kind, measured by the reference probe (2026-11-26, H200,
# 8192^3 GEMMs in >= 3 s NVML windows): bf16 1.048 pJ at 666 TFLOP/s, fp8 0.568 pJ at 1210 TFLOP/s.
PJ_PER_FLOP = {"bf16": 1.048, "fp8": 0.568}
PROMPT_TOKENS, NEW_TOKENS = 128, 64
# Random weights make quality numbers meaningless: shape sections switch the bound off.
NO_QUALITY_BOUND = ["quality.max_ppl_increase=1e9", "quality.min_top1_agreement=0", "quality.max_kl=1e9"]
SECTIONS = ("env", "profile", "qwen", "llama8b", "smollm2", "serving", "ort")


def graph_settings(
    attention: str = "sdpa_gqa", quantization: str = "none", compile_layers: bool = False
) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        precision="bf16",
        quantization=quantization,
        kv_cache="static",
        compile=True,
        attention=attention,
        loop="graph",
    )
    return settings | ({"compile_layers": True} if compile_layers else {})


def extra(batch: int, **settings: Any) -> str:
    """One `space.extra` entry as Hydra reads it."""
    body = ",".join(f"{k}:{str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items())
    return f"{{batch_size:{batch},{body}}}"


def qwen_candidates(small: bool) -> list[str]:
    """Qwen2-0.5B-shape candidates, in priority order (the search budget cuts the tail). The plain-HF
    plateau (generate + static cache + compile, batch 512) is what every ratio is taken against.
    `small`: CPU-smoke batch sizes."""
    b = (lambda n: 2) if small else (lambda n: n)
    return [
        extra(b(512), **PLATEAU),
        extra(b(1024), **graph_settings()),
        extra(b(1024), **graph_settings(quantization="fp8-static")),
        extra(b(1024), **graph_settings(attention="sdpa")),  # the 2026-11-26 best: repeated K/V
        # without flash kernels transformers' CB attends through one dense [tokens x context] mask
        # per step (quadratic in the batch): measured where that mask stays small
        extra(b(256), backend="torch-cb", precision="bf16", max_batch_tokens=256 if small else 4096),
        extra(b(2048), **graph_settings()),
    ]


def smollm2_candidates(small: bool) -> list[str]:
    batch = 2 if small else 256
    return [
        extra(batch, **graph_settings()),
        extra(batch, **graph_settings(quantization="fp8-static")),
        extra(batch, **graph_settings(quantization="fp8")),  # torchao dynamic per-row: the old fp8
        extra(batch, backend="torch-cb", precision="bf16", max_batch_tokens=4096 if not small else 256),
    ]


PLATEAU = dict(precision="bf16", kv_cache="static", compile=True)
# the serving candidate: the captured, compiled step over 64 slots with continuous admission (by
# arithmetic: 50 requests/s x 128 tokens x a 5-10 ms step is ~30-60 in flight)
SLOTS = dict(PLATEAU, attention="sdpa_gqa", loop="slots")
# the same, paced: a step every 20 ms at most (TPOT p90 <= 50 ms allows it), so each step carries
# more requests at the same rate; 256 slots hold them (by arithmetic: 50 x 128 x 20 ms = 128)
PACED_SLOTS = dict(SLOTS, step_interval_ms=20)
# the 64 slots again, one decoder layer compiled for all: a fraction of the compile time, and what
# it costs at run time beside the whole-model compile
SLOTS_BY_LAYER = dict(SLOTS, compile_layers=True)


# ---------------------------------------------------------------------------------------- helpers


def shape_dir(work: Path, name: str, shape: dict[str, Any], tokenizer_dir: Path | None, tiny: bool) -> Path:
    """A random-weight model of `shape` saved once (bf16), with SmolLM2's tokenizer (ids < 49152)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = work / (f"{name}-tiny" if tiny else name)
    if not (path / "config.json").is_file():
        kind = "qwen2" if "qwen" in name else "llama"
        config = AutoConfig.for_model(kind, **(shape | TINY if tiny else shape))
        torch.manual_seed(0)
        with torch.device("cpu" if tiny else "cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(path)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if tokenizer_dir is not None:
        # a model saved without them yields no prompt tokens in every later section (2026-12-04)
        files = sorted(tokenizer_dir.glob("tokenizer*"))
        if not files:
            raise SystemExit(
                f"{tokenizer_dir}: no tokenizer files (carry .gpu/a; its install step copies them)"
            )
        for file in files:
            if not (path / file.name).is_file():
                shutil.copy(file, path / file.name)
    return path


def smollm2_dir(gguf: Path, work: Path) -> Path:
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    return resolve_model(ModelConfig(source=str(gguf)), work / "cache").path


def flops_per_request(shape: Any, prompt: int, new: int) -> float:
    """Matmul FLOPs of one request: every prompt token through the body, the lm_head once per
    generated token (the prefill keeps only the last position's logits), attention over the
    context. The embedding lookup is a gather (no FLOPs)."""
    head = shape.vocab_size * shape.hidden_size
    body = shape.num_parameters - head * (1 if shape.tied else 2)
    attention_width = shape.num_layers * shape.num_attention_heads * shape.head_dim
    contexts = prompt * (prompt + 1) / 2 + sum(prompt + i for i in range(new))
    return 2 * body * (prompt + new) + 2 * head * new + 4 * attention_width * contexts


def energy_roofline(shape: Any, numerics: str, prompt: int = PROMPT_TOKENS, new: int = NEW_TOKENS) -> float:
    """Output tokens per joule if every matmul FLOP cost what a large GEMM costs on this GPU (the
    reference probe's pJ/FLOP) and nothing else cost anything: an upper bound for the workload."""
    return new / (flops_per_request(shape, prompt, new) * PJ_PER_FLOP[numerics] * 1e-12)


def row_of(result: Any) -> dict[str, Any]:
    p, q = result.performance, result.quality
    return {
        "label": result.candidate.label(),
        "settings": result.candidate.to_dict(),
        "role": result.role,
        "status": "feasible" if result.feasible else result.status,
        "reason": result.reason,
        "goodput_tok_per_J": p.goodput_tokens_per_joule.mean if p else None,
        "tok_per_J": p.tokens_per_joule.mean if p else None,
        "tok_per_J_std": p.tokens_per_joule.std if p else None,
        "active_tok_per_J": p.active_tokens_per_joule.mean if p else None,
        "tok_per_s": p.tokens_per_second.mean if p else None,
        "watts": p.watts.mean if p else None,
        "idle_watts": p.idle_watts if p else None,
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
        "seconds": result.seconds,
    }


def run_optimize(name: str, overrides: list[str], work: Path, out: Path) -> dict[str, Any]:
    from optimizer.pipeline import optimize
    from optimizer.target_defaults import compose_for_target

    run_dir = work / name
    cfg = compose_for_target(  # as the CLI composes: the GPU presets where none is named
        [
            *overrides,
            # every row is a measurement of its own; re-measuring finalists would spend the
            # section's time limit (selection is not what these sections check)
            "search.finalists=0",
            f"output_dir={run_dir}",
            f"store_path={work / 'trials.db'}",
            f"cache_dir={work / 'cache'}",
        ]
    )
    started = time.time()
    stop_partial = write_partial_rows(out / f"{name}.json", overrides, work / "trials.db", started)
    try:
        result = optimize(cfg)
    except KeyboardInterrupt:  # the section's time limit: the finished candidates are in the store
        rows = rows_since(work / "trials.db", started)
        print(f"interrupted at the section's time limit; {len(rows)} rows from the store", flush=True)
        return {"overrides": overrides, "best": None, "baseline": None, "interrupted": True, "rows": rows}
    finally:
        stop_partial()
    for file in ("recipe.yaml", "report.md"):
        if (run_dir / file).is_file():
            shutil.copy(run_dir / file, out / f"{name}-{file}")
    return {
        "overrides": overrides,
        "best": result.best.candidate.label() if result.best else None,
        "baseline": result.baseline.candidate.label() if result.baseline else None,
        "infeasible": str(result.infeasible) if result.infeasible else None,
        "rows": [row_of(r) for r in result.results],
    }


def write_partial_rows(
    file: Path, overrides: list[str], store_path: Path, since: float, every_seconds: float = 10.0
) -> Callable[[], None]:
    """Every few seconds, the section's JSON as the store holds it so far: a section killed after
    its time limit's grace (an engine's close() waits for a compile in flight, up to 60 s) left no
    JSON, and the summary said "not run" of rows that were measured. Returns the stop function;
    the section's own JSON replaces the file after it."""
    stopped = threading.Event()

    def keep_writing() -> None:
        while not stopped.wait(every_seconds):
            try:
                rows = rows_since(store_path, since)
            except Exception:  # noqa: BLE001 - no store yet, or busy: the next round
                continue
            data = {
                "overrides": overrides,
                "best": None,
                "baseline": None,
                "interrupted": "killed",
                "rows": rows,
            }
            if not stopped.is_set():
                file.write_text(json.dumps(data, indent=1, default=str))

    thread = threading.Thread(target=keep_writing, name="partial-json", daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join()

    return stop


def rows_since(store_path: Path, since: float) -> list[dict[str, Any]]:
    """Every result the store took since `since` (this section's: sections run one at a time)."""
    from sqlalchemy import select

    from optimizer.results import CandidateResult
    from optimizer.store import open_database, trials_table

    query = (
        select(trials_table.c.result).where(trials_table.c.created_at >= since).order_by(trials_table.c.seq)
    )
    with open_database(store_path).connect() as connection:
        stored = connection.execute(query).scalars().all()
    return [row_of(CandidateResult.from_dict(json.loads(text))) for text in stored]


def common_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [
        "target=auto",
        "space=gpu-batch",
        "workload=gpu",
        "workload.repeats=2",
        "search.candidate_timeout_minutes=3",
    ]
    if args.cpu_smoke:  # the same code paths, CPU-sized; CUDA-only candidates are excluded by rules
        overrides += ["target=cpu", "workload=quick", "workload.repeats=1", "quality.num_sequences=2"]
    return overrides


def tokenizer_source(args: argparse.Namespace, work: Path) -> Path:
    if args.gguf:
        return smollm2_dir(args.gguf, work)
    if args.tokenizer:
        return Path(args.tokenizer)
    raise SystemExit("give --gguf (SmolLM2) or --tokenizer: the shape models borrow its tokenizer")


# --------------------------------------------------------------------------------------- sections


def env_section(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from optimizer.config import TargetConfig
    from optimizer.target import detect_target

    query = "--query-gpu=name,driver_version,power.limit,power.draw,clocks.sm,temperature.gpu"
    try:
        smi = subprocess.run(["nvidia-smi", query, "--format=csv"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        smi = "nvidia-smi not found"
    versions: dict[str, str] = {}
    for package in ("torchao", "onnxruntime", "onnxruntime_genai", "triton"):
        try:
            versions[package] = __import__(package).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is a fact to record
            versions[package] = f"missing: {type(exc).__name__}"
    return {
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        **versions,
        "target": detect_target(TargetConfig()).fingerprint(),
    }


def profile_section(args: argparse.Namespace) -> dict[str, Any]:
    """Kernel-time tables: where a captured decode step's time goes, before and after the fix."""
    import torch

    from optimizer.backends.registry import build_engine
    from optimizer.config import ModelConfig, TargetConfig
    from optimizer.measure.kernels import profile_steps
    from optimizer.model import resolve_model
    from optimizer.space import Candidate, TorchSettings
    from optimizer.target import detect_target

    work = args.work
    model = resolve_model(
        ModelConfig(
            source=str(
                shape_dir(work, "qwen2-0.5b", QWEN2_05B_SHAPE, tokenizer_source(args, work), args.cpu_smoke)
            )
        ),
        work / "cache",
    )
    target = detect_target(TargetConfig(kind="cpu" if args.cpu_smoke else "auto"))
    device = torch.device(target.device)
    configs = [("sdpa_gqa", 1024), ("sdpa_gqa", 512)]
    if args.cpu_smoke:
        configs = [("sdpa", 4), ("sdpa_gqa", 4)]
    results: dict[str, Any] = {"model": "qwen2-0.5b shape", "tables": {}}
    markdown = []
    for attention, batch in configs:
        key = f"{attention} b{batch}"
        print(f"-- profile {key}", flush=True)
        settings = (
            TorchSettings(**graph_settings(attention))
            if not args.cpu_smoke
            else TorchSettings(precision="fp32", attention=attention)
        )
        engine: Any = build_engine(model, Candidate(settings, batch, 0), target, work / "cache")
        ids = torch.randint(0, 49152, (batch, PROMPT_TOKENS if not args.cpu_smoke else 16), device=device)
        entry: dict[str, Any] = {}
        decoder: Any = None
        try:
            # as TorchEngine.generate runs it: without autograd, a batch-1024 prefill would keep
            # every activation alive through the KV cache (~185 GB) and profile a training graph
            with torch.inference_mode():
                if args.cpu_smoke:  # no captured loop on a CPU: profile one plain forward
                    step = functools.partial(engine.model, input_ids=ids[:, -1:])
                    entry["eager_step"] = profile_steps(step, 3, device).to_dict()
                else:
                    decoder = engine.graph_decoder(batch, PROMPT_TOKENS, NEW_TOKENS)
                    tokens, ttft, total = decoder.generate(ids)  # compile + capture + one full run
                    timings = [decoder.generate(ids) for _ in range(2)]
                    entry["tpot_ms"] = [1000 * (t - f) / (NEW_TOKENS - 1) for _, f, t in timings]
                    entry["ttft_ms"] = [1000 * f for _, f, _ in timings]
                    decoder.prefill(ids)
                    eager = profile_steps(decoder.step, 8, device)
                    decoder.prefill(ids)
                    assert decoder.graph is not None
                    replay = profile_steps(decoder.graph.replay, 8, device)
                    prefill = profile_steps(functools.partial(decoder.prefill, ids), 2, device)
                    eager_prefill = profile_steps(
                        functools.partial(decoder.prefill, ids, eager=True), 2, device
                    )
                    entry |= {
                        "eager_step": eager.to_dict(),
                        "captured_step": replay.to_dict(),
                        "prefill": prefill.to_dict(),
                        "eager_prefill": eager_prefill.to_dict(),
                    }
                    markdown += [
                        f"## {key}: captured decode step (CUDA graph replays)\n",
                        f"TPOT measured over full generations: {', '.join(f'{v:.2f}' for v in entry['tpot_ms'])} ms;"
                        f" TTFT (prefill) {', '.join(f'{v:.0f}' for v in entry['ttft_ms'])} ms\n",
                        replay.markdown(),
                        f"\n## {key}: the same step launched eagerly (host gaps visible)\n",
                        eager.markdown(),
                        f"\n## {key}: prefill of {batch} x {PROMPT_TOKENS} tokens (compiled)\n",
                        prefill.markdown(),
                        f"\n## {key}: the same prefill, eager (as before 2026-12-04)\n",
                        eager_prefill.markdown(),
                        "",
                    ]
        except KeyboardInterrupt:  # the section's time limit: keep the tables made so far
            results["interrupted"] = key
            break
        finally:
            engine.close()
            decoder = None  # its model, cache and graph go with it, so that empty_cache frees them
            results["tables"][key] = entry
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    (args.out / "profile.md").write_text("\n".join(markdown) + "\n")
    return results


def qwen_section(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    path = shape_dir(work, "qwen2-0.5b", QWEN2_05B_SHAPE, tokenizer_source(args, work), args.cpu_smoke)
    minutes = max(1.0, args.budget_seconds / 60)
    overrides = [
        f"model={path}",
        *common_overrides(args),
        *NO_QUALITY_BOUND,
        "quality.num_sequences=4",
        # the grid collapses onto one listed candidate; the list is what is measured
        f"space.batch_sizes=[{2 if args.cpu_smoke else 1024}]",
        "space.torch.attention=[sdpa_gqa]",
        "space.torch.loops=[graph]",
        f"space.extra=[{','.join(qwen_candidates(args.cpu_smoke))}]",
        f"search.budget_minutes={minutes:.2f}",
    ]
    data = run_optimize("qwen", overrides, work, args.out)
    shape = _shape_of(path)
    data["roofline"] = {n: energy_roofline(shape, n) for n in PJ_PER_FLOP}
    return data


def smollm2_section(args: argparse.Namespace) -> dict[str, Any]:
    if not args.gguf:
        raise SystemExit("the smollm2 section needs --gguf")
    minutes = max(0.5, args.budget_seconds / 60)
    overrides = [
        f"model={args.gguf}",
        *common_overrides(args),
        "quality=default",
        f"space.batch_sizes=[{2 if args.cpu_smoke else 256}]",
        "space.torch.attention=[sdpa_gqa]",
        "space.torch.quantizations=[none]",
        "space.torch.loops=[graph]",
        f"space.extra=[{','.join(smollm2_candidates(args.cpu_smoke))}]",
        f"search.budget_minutes={minutes:.2f}",
    ]
    return run_optimize("smollm2", overrides, args.work, args.out)


def serving_section(args: argparse.Namespace) -> dict[str, Any]:
    """The request stream on the GPU, as `optimize` measures it by default there (space=gpu-default,
    workload=gpu-chat: the slot loop, continuous batching at two concurrency limits and chunk
    sizes, and the baseline one request at a time; the default's static-batch candidate is left
    out), on the Qwen2-0.5B shape.
    CPU smoke: the chat stream, the slot loop and one continuous-batching candidate beside static
    batches."""
    work = args.work
    path = shape_dir(work, "qwen2-0.5b", QWEN2_05B_SHAPE, tokenizer_source(args, work), args.cpu_smoke)
    overrides = [
        f"model={path}",
        *NO_QUALITY_BOUND,
        f"search.budget_minutes={max(1.0, args.budget_seconds / 60):.2f}",
        "search.candidate_timeout_minutes=3",
    ]
    if not args.cpu_smoke:  # target=auto, and no space= / workload=: the product's GPU defaults
        # half of gpu-chat's stream, one run per candidate: ~6 s at 50 requests/s, a 4 s window
        overrides += [
            "target=auto",
            "quality.num_sequences=4",
            "workload.requests=300",
            "workload.warmup_requests=25",
            "workload.drain_requests=25",
            "workload.repeats=1",
            # static batching behind a queue was measured on 2026-12-04 (0.12 tok/J, 41 s of the
            # section's time): the budget goes to the slot loop and continuous batching instead
            f"space.extra=[{extra(64, **SLOTS_BY_LAYER)},{extra(64, **SLOTS)},{extra(256, **PACED_SLOTS)}]",
        ]
    else:
        overrides += [
            "target=cpu",
            "workload=chat",
            "quality.num_sequences=2",
            "space.backends=[torch-cb]",
            "space.batch_sizes=[4]",
            "space.torch_cb.max_batch_tokens=[256]",
            # the GPU's two slot candidates, uncompiled (a CPU compile costs more than it saves here)
            f"space.extra=[{extra(4, **SLOTS | {'compile': False})},{extra(4, **PACED_SLOTS | {'compile': False})},"
            f"{extra(4, precision='bf16')}]",
            "space.baseline.precision=bf16",
            "workload.requests=12",
            "workload.warmup_requests=2",
            "workload.drain_requests=2",
        ]
    return run_optimize("serving", overrides, work, args.out)


def llama8b_section(args: argparse.Namespace) -> dict[str, Any]:
    """The 8B class, built in memory (saving and reloading 16 GB would cost more device time than
    the measurements): every candidate is measured by the product's engine and window code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from optimizer.backends.torch.backend import TorchEngine
    from optimizer.backends.torch.fp8_static import quantize_fp8_static
    from optimizer.config import SloConfig, TargetConfig, WorkloadConfig
    from optimizer.measure.energy import make_meter, measure_idle_watts
    from optimizer.measure.workload import Workload, measure_performance
    from optimizer.space import TorchSettings
    from optimizer.target import detect_target

    target = detect_target(TargetConfig(kind="cpu" if args.cpu_smoke else "auto"))
    meter = make_meter(target)
    idle = measure_idle_watts(meter, 2.0)
    shape_cfg = LLAMA31_8B_SHAPE | (TINY if args.cpu_smoke else {})
    config = AutoConfig.for_model("llama", **shape_cfg)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(target.device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    hf_model.eval()
    built = time.perf_counter() - start
    prompt, new = (PROMPT_TOKENS, NEW_TOKENS) if not args.cpu_smoke else (16, 4)
    pool = torch.randint(0, config.vocab_size, (256, prompt))
    workload = Workload(pool, new)
    cfg = WorkloadConfig(
        prompt_tokens=prompt,
        max_new_tokens=new,
        min_window_seconds=3.0 if not args.cpu_smoke else 0.2,
        repeats=2,
        warmup_batches=1,
        slo=SloConfig(tpot_ms=250),
    )
    shape = _shape_of_model(hf_model)
    plan: list[tuple[str, TorchSettings, int]] = [
        ("plain HF static cache (baseline)", TorchSettings(precision="bf16", kv_cache="static"), 256),
        # The loop rows compile one decoder layer for all 32 (compile_layers): compiling the whole
        # model twice (step, prefill) took most of the bf16 row's 140 s on 2026-12-04, and the fp8
        # row was never reached. fp8 first; last, the bf16 row compiled whole as on 2026-12-04,
        # what compiling by layer costs at run time, measured in the same call if time is left
        (
            "captured loop by layer, sdpa_gqa, fp8-static",
            TorchSettings(**graph_settings(quantization="fp8-static", compile_layers=True)),
            512,
        ),
        (
            "captured loop by layer, sdpa_gqa",
            TorchSettings(**graph_settings(compile_layers=True)),
            512,
        ),
        ("captured loop + compiled step, sdpa_gqa", TorchSettings(**graph_settings()), 512),
    ]
    loop_rows = {name for name, settings, _ in plan if settings.loop == "graph"}  # profiled when measured
    if args.cpu_smoke:  # every row's numerics and attention, eager (CUDA graphs need a GPU)
        plan = [
            (
                n,
                TorchSettings(
                    precision="bf16", kv_cache="static", attention=s.attention, quantization=s.quantization
                ),
                2,
            )
            for n, s, _ in plan
        ]
    rows = []
    deadline = time.perf_counter() + args.budget_seconds
    queue = list(plan)
    bf16_linears: dict[str, Any] = {}
    while queue:
        name, settings, batch = queue.pop(0)
        if time.perf_counter() > deadline:
            rows.append({"name": name, "batch": batch, "status": "not run: section budget spent"})
            continue
        print(f"-- llama8b {name} b{batch}", flush=True)
        row: dict[str, Any] = {"name": name, "batch": batch, "settings": settings.label()}
        try:
            if settings.quantization == "fp8-static" and not getattr(hf_model, "_fp8_static", None):
                # its Linear layers are replaced in place: kept to put back after the row, or
                # the bf16 rows after it would measure the fp8 model under a bf16 label
                bf16_linears = linear_modules(hf_model)
                calibration = torch.randint(0, config.vocab_size, (16, prompt), device=target.device)
                hf_model._fp8_static = quantize_fp8_static(hf_model, calibration)
                row["fp8"] = str(hf_model._fp8_static)
            row["fp8_linears"] = fp8_linear_count(hf_model)
            if settings.attention != hf_model.config._attn_implementation:
                if settings.attention == "sdpa_gqa":
                    from optimizer.backends.torch import decode_attention

                    decode_attention.register()
                hf_model.set_attn_implementation(settings.attention)
            engine = TorchEngine(hf_model, settings, target.device)
            t0 = time.perf_counter()
            try:
                perf = measure_performance(engine, workload, batch, meter, cfg)
                numerics = "fp8" if settings.quantization == "fp8-static" else "bf16"
                row |= {
                    "status": "measured",
                    "goodput_tok_per_J": perf.goodput_tokens_per_joule.mean,
                    "tok_per_J": perf.tokens_per_joule.mean,
                    "tok_per_J_std": perf.tokens_per_joule.std,
                    "tok_per_s": perf.tokens_per_second.mean,
                    "watts": perf.watts.mean,
                    "tpot_p90_ms": perf.latency.tpot_ms["p90"],
                    "ttft_p90_ms": perf.latency.ttft_ms["p90"],
                    "source": perf.source,
                    "roofline_tok_per_J": energy_roofline(shape, numerics, prompt, new),
                    "seconds": time.perf_counter() - t0,  # build, compiles, measurement: no profile
                }
                # the decoder just measured, before close() frees it (a CPU rehearsal's rows are eager)
                if name in loop_rows or settings.loop == "graph":
                    ids = workload.batch(0, batch).to(target.device)  # the measured prompts
                    profile_loop_row(row, engine, ids, new, args.out, args.cpu_smoke)
            finally:
                engine.close()  # frees this shape's static cache and graph; hf_model stays here
        except KeyboardInterrupt:  # the section's time limit: keep the rows measured so far
            if row.get("status") != "measured":  # a measured row interrupted in its profile stays
                row["status"] = "interrupted: section time limit"
            rows.append(row)
            break
        except Exception as exc:  # noqa: BLE001 - one failed candidate is a row, the next one runs
            row |= {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
            # not after a failed quantization: compiling whole would fail it again
            quantized = settings.quantization != "fp8-static" or getattr(hf_model, "_fp8_static", None)
            if settings.compile_layers and quantized:
                queue = compiled_whole_instead((name, settings, batch), queue)
                row["then"] = [queued[0] for queued in queue]
        if bf16_linears:  # after an fp8 row, measured or failed (a half-converted model too)
            put_back_modules(hf_model, bf16_linears)
            bf16_linears, hf_model._fp8_static = {}, None
        rows.append(row)
        print(
            json.dumps({k: v for k, v in row.items() if k not in ("fp8", "profile")}, default=str), flush=True
        )
    return {"model": "llama-3.1-8b shape", "idle_watts": idle, "build_seconds": built, "rows": rows}


def linear_modules(model: Any) -> dict[str, Any]:
    import torch

    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def put_back_modules(model: Any, modules: dict[str, Any]) -> None:
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


def fp8_linear_count(model: Any) -> int:
    from optimizer.backends.torch.fp8_static import Float8StaticLinear

    return sum(isinstance(m, Float8StaticLinear) for m in model.modules())


PlanRow = tuple[str, Any, int]  # (name, TorchSettings, batch)


def compiled_whole_instead(failed: PlanRow, rest: list[PlanRow]) -> list[PlanRow]:
    """The plan after a row compiled by layer failed: compile_layers has never run on a GPU, and
    the rows behind it (fp8 first) are the 8B target's, so the failed row runs again compiled
    whole, then the rest with each by-layer row compiled whole, each settings and batch once."""
    plan: list[PlanRow] = []
    for name, settings, batch in [failed, *rest]:
        if settings.compile_layers:
            settings = dataclasses.replace(settings, compile_layers=False)
            name = f"{name.replace(' by layer', ' compiled whole')} (by layer failed)"
        if all((settings, batch) != (s, b) for _, s, b in plan):
            plan.append((name, settings, batch))
    return plan


def profile_loop_row(
    row: dict[str, Any], engine: Any, ids: Any, new: int, out: Path, cpu_smoke: bool
) -> None:
    """Kernel-time tables of a measured loop row: its captured decode step and its prefill, into
    row["profile"] and profile-llama8b.md. The 8B class was never profiled: where its TPOT goes
    (bf16 21 ms at b512 on the H200, against ~11 ms for its FLOPs and K/V bytes at peak rates) and
    where its TTFT goes decides the next fix. A few seconds: the decoder measured is reused,
    compiled and captured. A failure is noted, not fatal."""
    import torch

    from optimizer.measure.kernels import profile_steps

    batch, prompt = ids.shape
    try:
        decoder = engine.graph_decoder(batch, prompt, new)
        # profile_steps runs 1 + 2 * steps steps after one prefill: within the output's room
        steps = 4 if not cpu_smoke else 1
        with torch.inference_mode():
            decoder.prefill(ids)
            step = decoder.step if cpu_smoke else decoder.graph.replay  # eager on a CPU rehearsal
            captured = profile_steps(step, steps, engine.device)
            prefill = profile_steps(functools.partial(decoder.prefill, ids), 1, engine.device)
    except Exception as exc:  # noqa: BLE001 - the row's measurement stands without its profile
        row["profile_error"] = f"{type(exc).__name__}: {exc}"[:300]
        traceback.print_exc()
        return
    row["profile"] = {"captured_step": captured.to_dict(), "prefill": prefill.to_dict()}
    for part, table in row["profile"].items():
        cats = ", ".join(f"{c} {v:.2f}" for c, v in table["by_category_ms_per_step"].items())
        print(f"   {part} ms: {cats}", flush=True)
    text = (
        f"## llama8b {row['name']}, b{batch}: captured decode step\n\n"
        f"TPOT p90 {row['tpot_p90_ms']:.1f} ms, TTFT p90 {row['ttft_p90_ms']:.0f} ms (the measured windows)\n\n"
        f"{captured.markdown()}\n\n## llama8b {row['name']}, b{batch}: prefill of {batch} x {prompt}\n\n"
        f"{prefill.markdown()}\n\n"
    )
    with (out / "profile-llama8b.md").open("a") as file:
        file.write(text)


def ort_section(args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime on CUDA: the gpu-marked ORT tests, then ort-onnx / ort-genai CUDA candidates."""
    from optimizer.backends import installed

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "tests/gpu/test_ort_gpu.py"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=max(60, args.budget_seconds / 2),
    )
    (args.out / "ort_tests.txt").write_text(tests.stdout[-20000:] + tests.stderr[-5000:])
    data: dict[str, Any] = {
        "tests_returncode": tests.returncode,
        "tests_tail": tests.stdout.strip().splitlines()[-1:] if tests.stdout else [],
        "missing": {
            "ort-onnx cuda": installed.missing_onnx_runtime("cuda"),
            "ort-genai cuda": installed.missing_genai("cuda"),
        },
    }
    # SmolLM2's real weights when carried, else the Qwen2-0.5B shape (random weights: no bound)
    work = args.work
    model = args.gguf or shape_dir(work, "qwen2-0.5b", QWEN2_05B_SHAPE, tokenizer_source(args, work), False)
    overrides = [
        f"model={model}",
        *common_overrides(args),
        *([] if args.gguf else NO_QUALITY_BOUND),
        "space=gpu-ort",
        # the two ORT paths on CUDA, one candidate each: the device time left after `all` fits
        # about two ONNX builds (export or genai builder) on top of the baseline
        "space.backends=[ort-genai,ort-onnx]",
        "space.batch_sizes=[32]",  # onnxruntime-genai's Generator takes at most 32 sequences
        "space.ort_genai.precisions=[fp16]",
        "space.ort_onnx.providers=[cuda]",
        "space.ort_onnx.quantizations=[none]",
        f"search.budget_minutes={max(0.5, args.budget_seconds / 2 / 60):.2f}",
    ]
    data["search"] = run_optimize("ort", overrides, work, args.out)
    return data


def _shape_of(path: Path) -> Any:
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    spec = resolve_model(ModelConfig(source=str(path)), path.parent / "cache")
    return _Shape.of(spec.shape, tied=True)


def _shape_of_model(hf_model: Any) -> Any:
    c = hf_model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return _Shape(
        num_layers=c.num_hidden_layers,
        hidden_size=c.hidden_size,
        num_attention_heads=c.num_attention_heads,
        head_dim=head_dim,
        vocab_size=c.vocab_size,
        num_parameters=sum(p.numel() for p in hf_model.parameters()),
        tied=bool(c.tie_word_embeddings),
    )


class _Shape:
    """The arithmetic the roofline needs (ModelShape plus whether the lm_head is tied)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    @classmethod
    def of(cls, shape: Any, tied: bool) -> _Shape:
        return cls(
            num_layers=shape.num_layers,
            hidden_size=shape.hidden_size,
            num_attention_heads=shape.num_attention_heads,
            head_dim=shape.head_dim,
            vocab_size=shape.vocab_size,
            num_parameters=shape.num_parameters,
            tied=tied,
        )


SECTION_FUNCTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": env_section,
    "profile": profile_section,
    "qwen": qwen_section,
    "llama8b": llama8b_section,
    "smollm2": smollm2_section,
    "serving": serving_section,
    "ort": ort_section,
}


# ---------------------------------------------------------------------------------------- summary


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "-"


def print_summary(sections: dict[str, Any]) -> None:
    print(
        "\n== summary: goodput tok/J (SLO-meeting tokens); x ref = ratio to the section's plain-HF reference"
    )
    for name in ("qwen", "smollm2", "serving", "ort"):
        data = sections.get(name) or {}
        if name == "ort" and "search" in data:  # its tests first, then its search's rows
            print(f"ort: gpu-marked ORT tests: {' '.join(data['tests_tail'])}")
            data = data["search"]
        if "rows" not in data:
            print(f"{name}: {data.get('error', 'not run')}")
            continue
        rows = data["rows"]
        plateau = next(
            (r for r in rows if r["settings"].get("compile") and r["settings"].get("loop") == "hf"), None
        )
        reference = plateau or next((r for r in rows if r["role"] == "baseline"), None)
        roof = data.get("roofline", {})
        print(f"{name}: best = {data['best']}  (reference: {reference['label'] if reference else '-'})")
        print(
            f"  {'candidate':<58} {'status':<9} {'tok/s':>8} {'tok/J':>7} {'W':>5} {'TPOT90':>7} {'KL':>7} {'x ref':>6} {'roof':>5}"
        )
        for r in rows:
            numerics = "fp8" if str(r["settings"].get("quantization", "")).startswith("fp8") else "bf16"
            bound = roof.get(numerics)
            frac = f"{r['goodput_tok_per_J'] / bound:.0%}" if bound and r["goodput_tok_per_J"] else "-"
            print(
                f"  {r['label'][:58]:<58} {r['status'][:9]:<9} {_fmt(r['tok_per_s'], '.0f'):>8} "
                f"{_fmt(r['goodput_tok_per_J'], '.2f'):>7} {_fmt(r['watts'], '.0f'):>5} "
                f"{_fmt(r['tpot_p90_ms'], '.1f'):>7} {_fmt(r['kl'], '.4f'):>7} "
                f"{_ratio(r['goodput_tok_per_J'], reference and reference['goodput_tok_per_J']):>6} {frac:>5}"
            )
            if r["status"] in ("failed", "rejected"):
                print(f"      {str(r['reason'])[:150]}")
    data = sections.get("llama8b") or {}
    if "rows" in data:
        base = next((r for r in data["rows"] if r.get("status") == "measured"), None)
        print(f"llama8b (idle {data['idle_watts']:.0f} W; reference: {base['name'] if base else '-'})")
        for r in data["rows"]:
            tpj = r.get("goodput_tok_per_J")
            roof = r.get("roofline_tok_per_J")
            print(
                f"  {r['name'][:64]:<64} b{r['batch']:<5} {r['status'][:9]:<9} {_fmt(r.get('tok_per_s'), '.0f'):>7} tok/s "
                f"{_fmt(tpj, '.2f'):>6} tok/J {_fmt(r.get('watts'), '.0f'):>4} W TPOT90 {_fmt(r.get('tpot_p90_ms'), '.1f'):>6} "
                f"x {_ratio(tpj, base and base.get('goodput_tok_per_J')):>5} roof {f'{tpj / roof:.0%}' if tpj and roof else '-'} "
                f"{_fmt(r.get('seconds'), '.0f'):>4} s"  # build (compiles) and measurement
            )
            if r["status"] == "failed":
                print(f"      {r['reason'][:150]}")
            for part, table in (r.get("profile") or {}).items():  # the top categories, ms per call
                cats = sorted(table["by_category_ms_per_step"].items(), key=lambda kv: -kv[1])[:4]
                print(
                    f"      {part} {_fmt(table['unprofiled_wall_ms_per_step'], '.1f')} ms: "
                    + ", ".join(f"{c} {v:.1f}" for c, v in cats)
                )
    elif data:
        print(f"llama8b: {data.get('error', 'not run')}")
    data = sections.get("profile") or {}
    if "error" in data:
        print(f"profile: {data['error']}")
    for key, entry in data.get("tables", {}).items():
        if not entry:
            print(f"profile {key}: interrupted at the section's time limit, no table")
            continue
        captured = entry.get("captured_step") or entry.get("eager_step") or {}
        cats = captured.get("by_category_ms_per_step", {})
        top = ", ".join(f"{c} {v:.2f}" for c, v in sorted(cats.items(), key=lambda kv: -kv[1])[:4])
        print(f"profile {key}: TPOT {entry.get('tpot_ms')} ms; per step ms: {top}")
        if "prefill" in entry and "eager_prefill" in entry:
            walls = [entry[k].get("unprofiled_wall_ms_per_step") for k in ("prefill", "eager_prefill")]
            print(f"  prefill ms: compiled {_fmt(walls[0], '.1f')}, eager {_fmt(walls[1], '.1f')}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=[*SECTIONS, "summary"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, help="SmolLM2 GGUF (smollm2; its tokenizer serves the shapes)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer dir when there is no --gguf")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wattsmith-gpu-check"))
    parser.add_argument("--budget-seconds", type=float, default=180)
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="the same code paths with tiny shapes on a CPU"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.section == "summary":
        sections = {}
        for name in SECTIONS:
            file = args.out / f"{name}.json"
            if file.is_file():
                sections[name] = json.loads(file.read_text())
        merged = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": sections}
        (args.out / "gpu_check.json").write_text(json.dumps(merged, indent=1, default=str))
        print_summary(sections)
        return
    from optimizer.cli import _setup_logging

    _setup_logging()
    started = time.perf_counter()
    print(f"== {args.section}", flush=True)
    try:
        data = SECTION_FUNCTIONS[args.section](args)
    except BaseException as exc:  # noqa: BLE001 - every section reports, even when interrupted
        data = {"error": f"{type(exc).__name__}: {exc}"[:1000], "traceback": traceback.format_exc()[-4000:]}
        print(data["traceback"], flush=True)
    data["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / f"{args.section}.json").write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()
