"""Compiling the slot loop's decoder layer by layer (`compile_layers`) against compiling it whole.

Three slot decoders over the same loaded weights: eager, compiled by layer (one graph serves every
decoder layer: `optimizer/backends/torch/compiling.py`) and compiled whole (the model one graph).
  compile  seconds each compiled decoder's build took: `compile_prefills` (its prefill graphs)
           and the first step (its step graph), each on a fresh inductor cache. By layer
           compiles first, so whole may reuse kernels it left in memory: whole's seconds are
           if anything too low
  parity   the first tokens and `--steps` steps of 16 prompts: how many differ from eager
  table    ms per step of every slot and per prefill of every slot's prompt, interleaved
           decoder by decoder, `--rounds` rounds (process CPU ms on a CPU, wall ms on a GPU)

    python evals/compile_layers.py --out evals/results/<date>-compile-layers [hydra overrides]
    python evals/compile_layers.py --precision fp32 ...   # parity without bf16's near-ties

Prints the table and, last, the RATIO lines (whole over by-layer: compile seconds, and ms per
step and per prefill; above 1, compiling by layer is cheaper).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("eager", "layers", "whole")
STEPS_PER_ROUND = 10


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="steps compared for parity")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", type=Path, default=None, help="folder for compile_layers.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (model, target)")
    args = parser.parse_intermixed_args()

    import torch
    from _common import chat_slot_weights, workload_text

    from optimizer.backends.torch.slot_decoder import SlotDecoder

    # the weights as the slot loop loads them; the decoders below are built over them
    setup, _, engine = chat_slot_weights(args.overrides, args.slots, args.precision)
    target = setup.target
    model = engine.model
    device = torch.device(target.device)
    region = args.prompt_tokens + args.steps + STEPS_PER_ROUND + 16
    text = workload_text(setup, args.slots * args.prompt_tokens)
    prompts = [text[i * args.prompt_tokens : (i + 1) * args.prompt_tokens] for i in range(args.slots)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = "wall" if device.type == "cuda" else "CPU"

    decoders: dict[str, SlotDecoder] = {}
    compile_seconds: dict[str, dict[str, float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    with torch.inference_mode():
        for mode in MODES:  # eager first (nothing to compile), then by layer, then whole
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"compile-layers-{mode}-")
            started = time.perf_counter()
            decoder = SlotDecoder(
                model, args.slots, region, device, compiled=mode != "eager", compile_layers=mode == "layers"
            )
            decoder.compile_prefills()
            sync()
            prefills = time.perf_counter() - started
            first = decoder.prefill(range(args.slots), prompts)
            started = time.perf_counter()
            decoder.step()  # every slot, the whole region: the step's first compile
            sync()
            compile_seconds[mode] = {"prefills": prefills, "step": time.perf_counter() - started}
            print(
                f"{mode}: compile_prefills {prefills:.1f} s, first step {compile_seconds[mode]['step']:.1f} s",
                flush=True,
            )
            decoder.prefill(range(args.slots), prompts)  # parity: the answers from the prompts again
            tokens[mode] = [first.tolist()]
            for _ in range(args.steps):
                decoder.step()
                tokens[mode].append(decoder.tokens[:, 0].tolist())
            decoders[mode] = decoder
        timings: dict[str, dict[str, list[float]]] = {m: {"step": [], "prefill": []} for m in MODES}
        for _ in range(args.rounds):
            for mode, decoder in decoders.items():
                step, prefill = measure_round(decoder, prompts, sync)
                timings[mode]["step"].append(step)
                timings[mode]["prefill"].append(prefill)
    engine.close()

    differing = {
        mode: sum(
            a != b
            for ra, rb in zip(tokens["eager"], tokens[mode], strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        for mode in MODES
    }
    total = sum(map(len, tokens["eager"]))
    print()
    print(f"model {setup.model.name} on {target.name}, {args.precision}, {args.slots} slots, region {region}")
    print(
        f"{'mode':<7} {'prefills s':>10} {'step s':>7} {f'step {clock} ms':>12} {f'prefill {clock} ms':>15} {'tokens differing':>16}"
    )
    for mode in MODES:
        print(
            f"{mode:<7} {compile_seconds[mode]['prefills']:>10.1f} {compile_seconds[mode]['step']:>7.1f} "
            f"{statistics.fmean(timings[mode]['step']):>12.1f} {statistics.fmean(timings[mode]['prefill']):>15.1f} "
            f"{differing[mode]:>8} of {total}"
        )
    build = {m: compile_seconds[m]["prefills"] + compile_seconds[m]["step"] for m in MODES}
    print(f"RATIO whole / by-layer compile seconds: {build['whole'] / build['layers']:.2f}x")
    for kind in ("step", "prefill"):
        per_round = [w / b for w, b in zip(timings["whole"][kind], timings["layers"][kind], strict=True)]
        listed = ", ".join(f"{r:.3f}" for r in per_round)
        print(
            f"RATIO whole / by-layer {clock} ms per {kind}: {statistics.fmean(per_round):.3f}x (rounds {listed})"
        )
        per_round = [e / b for e, b in zip(timings["eager"][kind], timings["layers"][kind], strict=True)]
        print(f"RATIO eager / by-layer {clock} ms per {kind}: {statistics.fmean(per_round):.3f}x")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": setup.model.name,
            "target": target.name,
            "precision": args.precision,
            "slots": args.slots,
            "region": region,
            "prompt_tokens": args.prompt_tokens,
            "clock": clock,
            "compile_seconds": compile_seconds,
            "timings_ms": timings,
            "tokens_differing_from_eager": differing,
            "tokens_compared": total,
            "torch": torch.__version__,
        }
        (args.out / "compile_layers.json").write_text(json.dumps(payload, indent=1))


def measure_round(decoder: Any, prompts: list[list[int]], sync: Any) -> tuple[float, float]:
    """ms per step of every slot (STEPS_PER_ROUND steps) and per prefill of every slot's prompt;
    process CPU ms on a CPU, wall ms on a GPU."""
    cuda = decoder.device.type == "cuda"

    def spent(wall: float, cpu: float) -> float:
        sync()
        return 1000 * ((time.perf_counter() - wall) if cuda else (time.process_time() - cpu))

    decoder.prefill(range(len(prompts)), prompts)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(STEPS_PER_ROUND):
        decoder.step()
    step = spent(wall, cpu) / STEPS_PER_ROUND
    wall, cpu = time.perf_counter(), time.process_time()
    decoder.prefill(range(len(prompts)), prompts)
    return step, spent(wall, cpu)


if __name__ == "__main__":
    main()
