"""Offer the chat stream to one llama.cpp candidate and time every llama_decode call of its loop.

A record, not a benchmark: it wraps the engine's decode call to see where a request's TTFT goes
(steps with prompt tokens against decode-only steps) and reads /proc/stat around each run for the
CPU time the hypervisor took (steal).

    python evals/results/2026-12-06-cpu-near-miss/stream_steps.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from optimizer.backends.queued import serving_engine  # noqa: E402
from optimizer.backends.registry import build_engine  # noqa: E402
from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.latency import percentile  # noqa: E402
from optimizer.measure.serving import serve_stream  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.space import Candidate  # noqa: E402

Step = tuple[float, int, int]  # seconds, tokens, outputs


def cpu_jiffies() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--candidate", type=json.loads, default={"backend": "llamacpp", "batch_size": 16, "threads": 2}
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: the chat stream)")
    args = parser.parse_args()
    cfg = compose_run_config(args.overrides)
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, Path(cfg.cache_dir).expanduser(), 64
    )
    assert setup.stream is not None, "a serving workload"
    candidate = Candidate.from_dict(args.candidate)
    engine: Any = build_engine(setup.model, candidate, setup.target, setup.cache_dir)
    longest = max(len(r.prompt_ids) + r.max_new_tokens for r in setup.stream.requests)
    server = serving_engine(engine, candidate.batch_size, longest)
    steps: list[Step] = []
    decode = engine._ctx.decode  # the context serving_engine reserved

    def timed(
        tokens: Sequence[int], positions: Sequence[int], sequences: Sequence[int], outputs: Sequence[bool]
    ) -> Any:
        start = time.perf_counter()
        logits = decode(tokens, positions, sequences, outputs)
        steps.append((time.perf_counter() - start, len(tokens), sum(outputs)))
        return logits

    engine._ctx.decode = timed
    w = cfg.workload
    try:
        for index in range(args.rounds):
            steps.clear()
            before = cpu_jiffies()
            run = serve_stream(server, setup.stream, setup.meter, w.slo, w.warmup_requests, w.drain_requests)
            spent = [b - a for a, b in zip(before, cpu_jiffies(), strict=True)]
            report(index, run, steps, spent)
    finally:
        engine.close()


def report(index: int, run: Any, steps: list[Step], spent: list[int]) -> None:
    ttft = [r.ttft for r in run.requests]
    tpot = [r.tpot for r in run.requests if r.output_tokens > 1]
    met = sum(r.met_slo for r in run.requests) / len(run.requests)
    print(
        f"round {index + 1}: TTFT p50 {percentile(ttft, 50) * 1e3:.0f} p90 {percentile(ttft, 90) * 1e3:.0f} ms, "
        f"TPOT p90 {percentile(tpot, 90) * 1e3:.0f} ms, SLO met {met:.0%}, "
        f"goodput {run.window.goodput_tokens / run.measurement.joules:.2f} tok/J"
    )
    print(
        f"  CPU jiffies: user {spent[0]} system {spent[2]} idle {spent[3]} steal {spent[7]} ({spent[7] / sum(spent):.1%})"
    )
    with_prompt = [s for s in steps if s[1] > s[2]]
    decode_only = [s for s in steps if s[1] == s[2]]
    for name, group in (("with prompt tokens", with_prompt), ("decode only", decode_only)):
        if group:
            seconds = sum(s[0] for s in group)
            print(
                f"  {name}: {len(group)} steps, median {statistics.median(s[0] for s in group) * 1e3:.0f} ms "
                f"at {statistics.median(s[1] for s in group):g} tokens, {sum(s[1] for s in group) / seconds:.0f} tokens/s"
            )


if __name__ == "__main__":
    main()
