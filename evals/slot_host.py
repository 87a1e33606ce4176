"""The slot loop's host time per decode step, the model's work taken out.

On a GPU a `loop=slots` step is one captured graph; between two steps the loop thread reads the
step's tokens, records them, retires finished requests and picks the next step's size and span,
and the device waits for it. Here a SlotEngine over a tiny model has its decoder's `run_step`
replaced by a no-op, so what a step costs is that host work alone (the token read-back included:
a copy from a CPU tensor here, a synchronizing copy on a GPU). `slots` requests of `--new` tokens
each are generated at once; each step's time is `_step` from its start to its record's end.

    python evals/slot_host.py [--slots 16 64 256 1024] [--new 1000] [--out DIR]

Prints one line per slot count: steps, median and mean microseconds per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def host_microseconds_per_step(slots: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from optimizer.backends.torch.slot_server import SlotEngine
    from tests.unit.backends.torch.test_slot_loop import tiny_llama

    engine = SlotEngine(tiny_llama(), slots, "cpu")
    try:
        engine.reserve(new_tokens + 100)
        assert engine.decoder is not None
        engine.decoder.run_step = lambda busy, columns: None  # type: ignore[method-assign]
        spent: list[float] = []
        step = engine._step

        def timed_step() -> None:
            start = time.perf_counter()
            step()
            spent.append(time.perf_counter() - start)

        engine._step = timed_step  # type: ignore[method-assign]
        engine.generate(torch.randint(0, 100, (slots, 8)), new_tokens)
    finally:
        engine.close()
    return {
        "slots": slots,
        "steps": len(spent),
        "median_us": 1e6 * statistics.median(spent),
        "mean_us": 1e6 * statistics.fmean(spent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--new", type=int, default=1000, help="tokens per request (steps + 1)")
    parser.add_argument("--out", type=Path, help="write host.json here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for slots in args.slots:
        row = host_microseconds_per_step(slots, args.new)
        rows.append(row)
        print(
            f"slots {slots:>5}: {row['steps']} steps, host per step median {row['median_us']:.1f} us,"
            f" mean {row['mean_us']:.1f} us",
            flush=True,
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
