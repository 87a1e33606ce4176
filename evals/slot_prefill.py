"""The slot loop's compiled prefill against its eager prefill, side by side in this process.

`loop=slots` with `compile` compiles its decode step and (since 2026-12-05) its prefill, whose
rows, width and key span are dynamic: one compile per kind of prefill (one row or more, with or
without a copied prefix), made before any request is admitted. Two slot decoders over the same
loaded weights, compiled and eager:
  compile  seconds the compiled decoder's `compile_prefills` took (a fresh inductor cache unless
           --warm-cache), and the graphs it holds after every shape below
  parity   the first token of every shape's prompts: the compile changes no token
  table    ms per prefill (wall and process CPU), interleaved round by round, for prompts of
           `--tokens` at `--rows`, and the same prompts with their first half cached (the prefix
           path: a turn resent after its history)

    python evals/slot_prefill.py --rounds 3 --out evals/results/<date>-slot-prefill [hydra overrides]
    python evals/slot_prefill.py target=auto model=DIR --slots 64 ...   # on a GPU: wall ms

Prints the table and, last, the RATIO lines (eager over compiled ms per prefill: above 1, the
compiled prefill is faster).
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

PREFILLS_PER_ROUND = 3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per shape")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16], help="prompts per prefill")
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512], help="prompt tokens")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--warm-cache", action="store_true", help="keep the run's inductor cache")
    parser.add_argument("--out", type=Path, default=None, help="folder for slot_prefill.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (model, target)")
    args = parser.parse_intermixed_args()
    if not args.warm_cache:  # the compile seconds a fresh machine pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="slot-prefill-inductor-")
    if max(args.rows) > args.slots:
        raise SystemExit(f"--rows up to --slots ({args.slots}), got {max(args.rows)}")

    import torch
    from _common import chat_slot_weights, workload_text

    from optimizer.backends.torch.slot_decoder import SlotDecoder

    # the weights as the slot loop loads them; the decoders below are built over them
    setup, candidate, engine = chat_slot_weights(args.overrides, args.slots, args.precision)
    target = setup.target
    model = engine.model
    device = torch.device(target.device)
    region = max(args.tokens) + 16
    text = workload_text(setup, max(args.rows) * max(args.tokens))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def prompts(rows: int, tokens: int) -> list[list[int]]:
        return [text[i * tokens : (i + 1) * tokens] for i in range(rows)]

    decoders = {
        "compiled": SlotDecoder(model, args.slots, region, device, compiled=True, stored=args.slots),
        "eager": SlotDecoder(model, args.slots, region, device, stored=args.slots),
    }
    with torch.inference_mode():
        started = time.perf_counter()
        decoders["compiled"].compile_prefills()
        sync()
        compile_seconds = time.perf_counter() - started
        print(f"{candidate.label()} on {target.name}: compile_prefills {compile_seconds:.1f} s", flush=True)
        table, parity = [], []
        for tokens in args.tokens:
            for rows in args.rows:
                for cached_half in (False, True):
                    entry = measure_shape(decoders, prompts(rows, tokens), cached_half, args.rounds, sync)
                    parity.append(entry["first_tokens_differing"] == 0)
                    table.append(entry)
                    print(
                        f"{rows:>3} x {tokens:>4} tokens{' (half cached)' if cached_half else '':<14} "
                        f"compiled {entry['compiled_ms']:8.1f} ms  eager {entry['eager_ms']:8.1f} ms  "
                        f"eager/compiled {entry['ratio']:.3f}",
                        flush=True,
                    )
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        graphs = len(_debug_get_cache_entry_list(SlotDecoder._prefill.__code__))
    engine.close()
    print()
    print(f"model {setup.model.name} on {target.name}, {args.precision}, {args.slots} slots, region {region}")
    print(f"compile_prefills: {compile_seconds:.1f} s; prefill graphs after every shape: {graphs}")
    differing = sum(e["first_tokens_differing"] for e in table)
    print(
        f"parity: {sum(parity)} of {len(parity)} shapes gave the same first tokens "
        f"({differing} of {sum(e['rows'] for e in table)} rows differ)"
    )
    clock = "wall" if device.type == "cuda" else "CPU"
    print(
        f"{'rows':>4} {'tokens':>6} {'cached':>6} {'compiled ms':>11} {'eager ms':>9} {f'{clock} ratio':>10} {'differing':>9}"
    )
    for e in table:
        print(
            f"{e['rows']:>4} {e['tokens']:>6} {e['cached']:>6} {e['compiled_ms']:>11.1f} "
            f"{e['eager_ms']:>9.1f} {e['ratio']:>10.3f} {e['first_tokens_differing']:>9}"
        )
    for e in table:
        listed = ", ".join(f"{v:.3f}" for v in e["round_ratios"])
        print(
            f"RATIO eager / compiled prefill, {e['rows']} x {e['tokens']} tokens, {e['cached']} cached: "
            f"{e['ratio']:.3f}x (rounds {listed})"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": setup.model.name,
            "target": target.name,
            "candidate": candidate.to_dict(),
            "region": region,
            "compile_seconds": compile_seconds,
            "fresh_inductor_cache": not args.warm_cache,
            "prefill_graphs": graphs,
            "parity_shapes_same": sum(parity),
            "shapes": len(parity),
            "clock": clock,
            "table": table,
            "torch": torch.__version__,
        }
        (args.out / "slot_prefill.json").write_text(json.dumps(payload, indent=1))


def measure_shape(
    decoders: dict[str, Any], prompts: list[list[int]], cached_half: bool, rounds: int, sync: Any
) -> dict[str, Any]:
    """ms per prefill of `prompts` (into slots 0..n-1; with `cached_half`, their first halves first
    copied in from store rows that hold them) by each decoder, interleaved; CPU ms on a CPU."""
    rows, tokens = len(prompts), len(prompts[0])
    slots = list(range(rows))
    cached = [tokens // 2] * rows if cached_half else None
    per_round: dict[str, list[float]] = {name: [] for name in decoders}
    firsts: dict[str, list[int]] = {}
    for decoder in decoders.values():  # the store rows hold the prompts (unmeasured)
        decoder.prefill(slots, prompts)
        for i in slots:
            decoder.cache.copy_columns(i, decoder.slots + i, tokens)
    for _ in range(rounds):
        for name, decoder in decoders.items():
            spent = 0.0
            for _ in range(PREFILLS_PER_ROUND):
                if cached:
                    for i in slots:
                        decoder.cache.copy_columns(decoder.slots + i, i, cached[i])
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                first = decoder.prefill(slots, prompts, cached)
                sync()
                spent += (
                    (time.perf_counter() - wall)
                    if decoder.device.type == "cuda"
                    else (time.process_time() - cpu)
                )
                firsts[name] = first.tolist()
            per_round[name].append(1000 * spent / PREFILLS_PER_ROUND)
    ratios = [e / c for c, e in zip(per_round["compiled"], per_round["eager"], strict=True)]
    return {
        "rows": rows,
        "tokens": tokens,
        "cached": cached[0] if cached else 0,
        "compiled_ms": statistics.fmean(per_round["compiled"]),
        "eager_ms": statistics.fmean(per_round["eager"]),
        "ratio": statistics.fmean(ratios),
        "round_ratios": ratios,
        # rows whose first token differs (bf16: a near-tie's argmax may flip under fusion)
        "first_tokens_differing": sum(
            a != b for a, b in zip(firsts["compiled"], firsts["eager"], strict=True)
        ),
    }


if __name__ == "__main__":
    main()
