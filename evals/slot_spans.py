"""The slot loop's key spans, side by side in this process.

`loop=slots` keeps one static K/V region per slot, sized for the stream's longest request. A step
attends only to the key columns its longest busy request has reached (a multiple of the span step);
before spans every step attended to every slot's whole region. Two slot engines over the same
loaded weights, `spans` (the default) and `whole region` (`key_span_step=0`), interleaved round
by round:
  parity   both answer the stream's first requests: the span changes no token
  offline  the stream's `--offline-requests` longest prompts at once, `--offline-new` tokens each:
           CPU (or wall) time per token, no arrival noise
  stream   the stream offered in real time (`--rounds`): goodput tok/J, TPOT
  table    one step of all slots over spans of 64 columns up to a `--table-region`-token region
           (positions pinned below the smallest span): ms per step, wall and process CPU

    python evals/slot_spans.py --rounds 3 --out evals/results/<date>-slot-spans [hydra overrides]

Prints the tables and, last, the RATIO lines (spans over whole region, per round and mean).
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

from _common import energy_source_line, energy_sources, slot_engine  # noqa: E402
from serving import row, setup_for  # noqa: E402

from optimizer.backends.torch.slot_decoder import SlotDecoder  # noqa: E402
from optimizer.backends.torch.slot_server import SlotEngine  # noqa: E402
from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.energy import measure_idle_watts  # noqa: E402
from optimizer.measure.serving import Completion, ServingRun, serve_stream  # noqa: E402

PARITY_REQUESTS = 16
PARITY_TIMEOUT_SECONDS = 600.0
TABLE_STEPS = 20


def step_table(model: Any, slots: int, region: int, device: str) -> list[dict[str, float]]:
    """ms per step of `slots` rows attending to 64, 128, 256, ... columns and the whole region."""
    import torch

    decoder = SlotDecoder(model, slots, region, torch.device(device), key_span_step=64)
    spans = sorted({s for s in decoder.spans if s & (s - 1) == 0} | {decoder.spans[-1]})
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    with torch.inference_mode():
        for span in spans:
            for index in range(3 + TABLE_STEPS):
                if index == 3:
                    sync()
                    wall, cpu = time.perf_counter(), time.process_time()
                decoder.cache.positions.fill_(32)  # every row inside the smallest span
                decoder.step(slots, span)
            sync()
            rows.append(
                {
                    "span": span,
                    "ms_per_step": 1000 * (time.perf_counter() - wall) / TABLE_STEPS,
                    "cpu_ms_per_step": 1000 * (time.process_time() - cpu) / TABLE_STEPS,
                }
            )
    return rows


def answers(server: SlotEngine, requests: list[tuple[tuple[int, ...], int]]) -> list[tuple[int, ...]]:
    """Every request's tokens, all submitted at once."""
    ids = [server.submit(list(prompt), new) for prompt, new in requests]
    done: dict[str, Completion] = {}
    deadline = time.perf_counter() + PARITY_TIMEOUT_SECONDS
    while len(done) < len(ids) and time.perf_counter() < deadline:
        done.update({c.request_id: c for c in server.collect(1.0)})
    if len(done) < len(ids):
        raise SystemExit(f"the parity requests did not finish in {PARITY_TIMEOUT_SECONDS:.0f} s")
    return [done[i].token_ids for i in ids]


def offline_rounds(
    servers: dict[str, SlotEngine], asked: list[tuple[tuple[int, ...], int]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Each server answers `asked` (all submitted at once) `rounds` times, interleaved."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for index in range(rounds):
        for name, server in servers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = sum(len(answer) for answer in answers(server, asked))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[name].append(
                {
                    "tokens": tokens,
                    "seconds": wall,
                    "cpu_seconds": cpu,
                    "cpu_ms_per_token": 1000 * cpu / tokens,
                }
            )
            print(
                f"offline round {index + 1} {name:<12} {tokens} tokens in {wall:.1f} s, "
                f"{1000 * cpu / tokens:.1f} CPU ms/token, {tokens / wall:.1f} tok/s",
                flush=True,
            )
    return results


def round_ratio(value: float, over: float) -> float | None:
    """None where `over` is 0: the whole region's goodput when nothing met the SLO."""
    return value / over if over > 0 else None


def print_ratio(what: str, values: list[float | None]) -> None:
    """The mean of the rounds' ratios; n/a when a round has none: a mean of the rest would drop
    exactly the rounds the whole region lost."""
    listed = ", ".join(f"{v:.3f}" if v is not None else "n/a" for v in values)
    known = [v for v in values if v is not None]
    mean = f"{statistics.fmean(known):.3f}x" if known and len(known) == len(values) else "n/a"
    print(f"RATIO spans / whole region, {what}: {mean} (rounds {listed})")


def write_out(folder: Path, payload: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slot_spans.json").write_text(json.dumps(payload, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the stream (0: none)")
    parser.add_argument(
        "--offline-rounds", type=int, default=3, help="interleaved rounds of the offline batch"
    )
    parser.add_argument("--offline-requests", type=int, default=32)
    parser.add_argument("--offline-new", type=int, default=64, help="new tokens per offline request")
    parser.add_argument("--batch", type=int, default=16, help="slots")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--table-region", type=int, default=1024, help="region of the step table, tokens")
    parser.add_argument("--out", type=Path, default=None, help="folder for slot_spans.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default workload: chat)")
    args = parser.parse_intermixed_args()

    cfg = compose_run_config(["workload=chat", *args.overrides])
    setup = setup_for(cfg, 64)
    stream = setup.stream
    if stream is None:
        raise SystemExit("a serving workload is needed (workload=chat or agent)")
    target = setup.target
    candidate, spans = slot_engine(setup, args.batch, args.precision, Path(cfg.cache_dir).expanduser())
    whole = SlotEngine(spans.model, args.batch, target.device, compiled=spans.compiled, key_span_step=0)
    servers = {"spans": spans, "whole region": whole}
    longest_prompts = sorted(stream.requests, key=lambda r: -len(r.prompt_ids))[: args.offline_requests]
    offline_asked = [(r.prompt_ids, args.offline_new) for r in longest_prompts]
    longest = max(
        *(len(r.prompt_ids) + r.max_new_tokens for r in stream.requests),
        *(len(prompt) + new for prompt, new in offline_asked),
    )
    runs: dict[str, list[ServingRun]] = {name: [] for name in servers}
    w = cfg.workload
    try:
        for server in servers.values():
            server.reserve(longest)
        decoder = spans.decoder
        assert decoder is not None
        print(f"{candidate.label()}: {decoder.max_len}-column regions, spans {decoder.spans}", flush=True)
        asked = [(r.prompt_ids, r.max_new_tokens) for r in stream.requests[:PARITY_REQUESTS]]
        same = sum(a == b for a, b in zip(answers(spans, asked), answers(whole, asked), strict=True))
        print(f"parity: {same} of {len(asked)} requests answered with the same tokens", flush=True)
        offline = offline_rounds(servers, offline_asked, args.offline_rounds)
        idle = measure_idle_watts(setup.meter, w.idle_seconds)
        for index in range(args.rounds):
            for name, server in servers.items():
                run = serve_stream(server, stream, setup.meter, w.slo, w.warmup_requests, w.drain_requests)
                runs[name].append(run)
                m = run.measurement
                print(
                    f"round {index + 1} {name:<12} goodput {run.window.goodput_tokens / m.joules:.3f} tok/J, "
                    f"{run.window.output_tokens / m.seconds:.1f} tok/s",
                    flush=True,
                )
        table = step_table(spans.model, args.batch, args.table_region, target.device)
    finally:
        for server in servers.values():
            server.close()

    rows = {name: row(candidate, runs[name], setup, {}, "stream") for name in servers} if args.rounds else {}
    ratios: dict[str, list[float | None]] = {
        "offline tokens per CPU second": [
            round_ratio(o["cpu_ms_per_token"], s["cpu_ms_per_token"])
            for s, o in zip(offline["spans"], offline["whole region"], strict=True)
        ]
    }
    for key in ("goodput_tokens_per_joule", "tokens_per_second") if rows else ():
        pairs = zip(rows["spans"]["rounds"], rows["whole region"]["rounds"], strict=True)
        ratios[f"stream {key}"] = [round_ratio(s[key], o[key]) for s, o in pairs]
    if args.out:  # before any printing: what was measured is kept whatever the tables make of it
        write_out(
            args.out,
            {
                "overrides": args.overrides,
                "candidate": candidate.to_dict(),
                "spans": decoder.spans,
                "parity_same": same,
                "parity_requests": len(asked),
                "idle_watts": idle,
                "offline": offline,
                "ratios": ratios,
                "step_table": table,
                "rows": rows,
            },
        )

    print()
    print(f"model {setup.model.name} on {target.name}; idle {idle:.1f} W; {candidate.label()}")
    print(
        f"-- offline: the {len(offline_asked)} longest prompts of the stream "
        f"({len(offline_asked[-1][0])}-{len(offline_asked[0][0])} tokens), {args.offline_new} new tokens each"
    )
    for name, results in offline.items():
        per_token = statistics.fmean(r["cpu_ms_per_token"] for r in results)
        rate = statistics.fmean(r["tokens"] / r["seconds"] for r in results)
        print(f"{name:<13} {per_token:.2f} CPU ms/token, {rate:.1f} tok/s")
    if rows:
        print(energy_source_line(energy_sources(rows.values())))
        print(f"-- stream: {w.requests} requests at {w.rate:g} req/s, longest {longest} tokens")
        print(
            f"{'':<13} {'goodput/J':>9} {'tok/J':>7} {'tok/s':>7} {'SLO met':>7} {'TTFT p90':>9} {'TPOT p90':>9}"
        )
        for name, r in rows.items():
            print(
                f"{name:<13} {r['goodput_tokens_per_joule']:>9.3f} {r['tokens_per_joule']:>7.3f} "
                f"{r['tokens_per_second']:>7.1f} {r['summary']['met_slo_fraction']:>7.0%} "
                f"{r['ttft_p90_ms']:>7.0f}ms {r['tpot_p90_ms']:>7.0f}ms"
            )
    print(f"-- one step of {args.batch} slots over a {args.table_region}-token region")
    print(f"{'span':>6} {'ms/step':>8} {'CPU ms/step':>12}")
    for entry in table:
        print(f"{entry['span']:>6} {entry['ms_per_step']:>8.1f} {entry['cpu_ms_per_step']:>12.1f}")
    for what, values in ratios.items():
        print_ratio(what, values)


if __name__ == "__main__":
    main()
