"""Serving benchmark: one request stream, four ways of serving it, side by side in this process.

Phase 1 runs `optimize` on the chat stream (default space, resumable through its store) and takes
the selected serving candidate. Phase 2 offers the same chat stream at the same rate, interleaved
round by round, to
  hf-default    HF generate in the checkpoint's dtype, one request at a time (requests queue): the
                careless default
  static-batch  the offline recipe wattsmith selected before serving existed (HF bf16, static
                batches of up to 64 from the queue)
  selected      the serving candidate of phase 1
  llama.cpp     the llamacpp backend on the same GGUF with the same threads (when installed)
Phase 3 offers the agent stream (multi-turn conversations resending their history) to the
selected candidate with prefix sharing on and off, interleaved, and likewise to transformers'
continuous batching and to wattsmith's slot loop (where the selected candidate is neither).

Prints a table and, last, the RATIO lines; --out writes every request's timings as JSON.

    python evals/serving.py --rounds 2 --out evals/results/<date>-serving
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import energy_source_line, energy_sources  # noqa: E402

from optimizer.backends.queued import QueuedServer, serving_engine  # noqa: E402
from optimizer.backends.registry import SPECS_BY_NAME, build_engine  # noqa: E402
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings  # noqa: E402
from optimizer.config import RunConfig, compose_run_config  # noqa: E402
from optimizer.measure.energy import measure_idle_watts  # noqa: E402
from optimizer.measure.latency import percentile  # noqa: E402
from optimizer.measure.serving import ServingRun, serve_stream, summarize, ttft_seconds  # noqa: E402
from optimizer.measure.setup import MeasurementSetup, prepare_measurement  # noqa: E402
from optimizer.pipeline import optimize  # noqa: E402
from optimizer.recipe import read_recipe  # noqa: E402
from optimizer.space import Candidate, baseline_candidate, exclusion_reason  # noqa: E402

# The offline recipe checked in before serving (recipes/smollm2-135m at 897ee00): HF bf16, batch 64
STATIC_BATCH = {"backend": "torch", "batch_size": 64, "precision": "bf16"}
# llama.cpp out of the box: the GGUF as shipped, its default settings, 16 sequences at once
LLAMACPP_PEER = {"backend": "llamacpp", "batch_size": 16}
# the agent phase measures prefix sharing on transformers' continuous batching too (cpu-default's)
TORCH_CB_PAIR = {"backend": "torch-cb", "batch_size": 16, "precision": "bf16", "page_size": 64}
# and on the slot loop (cpu-default's extra candidate)
SLOTS_PAIR = {
    "backend": "torch",
    "batch_size": 16,
    "precision": "bf16",
    "kv_cache": "static",
    "loop": "slots",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each phase")
    parser.add_argument("--out", type=Path, default=None, help="folder for serving.json (every request)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "outputs" / "serving-benchmark")
    parser.add_argument("--peer", type=json.loads, default=LLAMACPP_PEER, help="llama.cpp candidate as JSON")
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="take the selected candidate from this serving recipe (skips phase 1)",
    )
    parser.add_argument(
        "--agent-only",
        action="store_true",
        help="measure the agent phase only; chat rows from --out/serving.json where it exists",
    )
    parser.add_argument("--agent", action="append", default=[], help="a Hydra override for the agent phase")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for the chat phase (e.g. workload.rate=3)"
    )
    args = parser.parse_intermixed_args()

    from optimizer.cli import _setup_logging

    _setup_logging()
    store = [f"store_path={args.run_dir / 'trials.db'}"]
    chat_cfg = compose_run_config([*args.overrides, f"output_dir={args.run_dir / 'search'}", *store])
    started = time.perf_counter()
    recipe = read_recipe(args.recipe) if args.recipe is not None else None
    if recipe is not None:  # the selection `optimize` already made on this stream (checked below)
        selected = recipe.candidate
    else:
        search = optimize(chat_cfg)  # phase 1: resumable through the store
        if search.best is None:
            raise SystemExit(f"nothing feasible on the chat stream: {search.infeasible}")
        selected = search.best.candidate
    search_seconds = time.perf_counter() - started

    chat = setup_for(chat_cfg, 64)
    recorded = (recipe.evidence.get("serving") or {}).get("stream_sha256") if recipe else None
    if recipe is not None and (chat.stream is None or recorded != chat.stream.sha256):
        raise SystemExit(f"{args.recipe} was selected on another stream than this chat stream")
    idle = measure_idle_watts(chat.meter, chat_cfg.workload.idle_seconds)
    threads = selected.threads or chat.target.cores
    contenders = {
        "hf-default": baseline_candidate(
            chat_cfg.space, chat.target, checkpoint_precision=chat.model.shape.checkpoint_precision
        ),
        "static-batch": Candidate.from_dict({**STATIC_BATCH, "threads": threads}),
        "selected": selected,
    }
    peer = peer_candidate({**args.peer, "threads": args.peer.get("threads", threads)}, chat)
    if peer is not None:
        contenders["llama.cpp"] = peer
    if args.agent_only:
        earlier = args.out / "serving.json" if args.out else None
        chat_rows = json.loads(earlier.read_text())["chat"] if earlier and earlier.exists() else {}
    else:
        chat_rows = side_by_side(contenders, chat, args.rounds, "chat")

    agent_cfg = compose_run_config(["workload=agent", *args.agent, *store])
    agent = setup_for(agent_cfg, 16)
    agent.meter.idle_watts = idle
    agent_rows: dict[str, dict[str, Any]] = {}
    pairs = {"": selected}
    if not isinstance(selected.settings, ContinuousBatchingSettings):  # transformers' engine too
        pairs["torch-cb "] = Candidate.from_dict({**TORCH_CB_PAIR, "threads": threads})
    if getattr(selected.settings, "loop", None) != "slots":  # and the slot loop
        pairs["slots "] = Candidate.from_dict({**SLOTS_PAIR, "threads": threads})
    sharing = {
        f"{name}prefix {state}": dataclasses.replace(
            candidate, settings=with_prefix_sharing(candidate.settings, state == "on")
        )
        for name, candidate in pairs.items()
        if hasattr(candidate.settings, "prefix_sharing")
        for state in ("on", "off")
    }
    if sharing:
        agent_rows = side_by_side(sharing, agent, args.rounds, "agent")
    else:
        print(f"the selected candidate ({selected.label()}) has no prefix sharing: agent phase skipped")

    print_table(chat_rows, agent_rows, chat, idle, search_seconds)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "chat_overrides": args.overrides,
            "idle_watts": idle,
            "search_seconds": search_seconds,
            "chat_workload": dataclasses.asdict(chat_cfg.workload),
            "agent_workload": dataclasses.asdict(agent_cfg.workload),
            "chat": chat_rows,
            "agent": agent_rows,
        }
        (args.out / "serving.json").write_text(json.dumps(payload, indent=1, default=str))


def with_prefix_sharing(settings: Any, on: bool) -> Any:
    """The same settings with prefix sharing on or off (torch-cb, llamacpp, torch loop=slots)."""
    return dataclasses.replace(settings, prefix_sharing=on)


def setup_for(cfg: RunConfig, prompt_pool: int) -> MeasurementSetup:
    return prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, Path(cfg.cache_dir).expanduser(), prompt_pool
    )


def peer_candidate(data: dict[str, Any], setup: MeasurementSetup) -> Candidate | None:
    if data.get("backend") not in SPECS_BY_NAME:
        print(f"no {data.get('backend')} backend in this wattsmith: the llama.cpp row is left out")
        return None
    candidate = Candidate.from_dict(data)
    reason = exclusion_reason(candidate, setup.target, serving=True)
    if reason:
        print(f"llama.cpp row left out: {reason}")
        return None
    return candidate


def side_by_side(
    contenders: dict[str, Candidate], setup: MeasurementSetup, rounds: int, phase: str
) -> dict[str, dict[str, Any]]:
    """Build every contender once, then offer the stream to each in turn, `rounds` times."""
    stream = setup.stream
    assert stream is not None, "a serving workload"
    longest = max(len(r.prompt_ids) + r.max_new_tokens for r in stream.requests)
    cfg = setup.workload_cfg
    engines, servers = {}, {}
    runs: dict[str, list[ServingRun]] = {name: [] for name in contenders}
    try:
        for name, candidate in contenders.items():
            engines[name] = build_engine(setup.model, candidate, setup.target, setup.cache_dir)
            servers[name] = serving_engine(engines[name], candidate.batch_size, longest)
        for index in range(rounds):
            for name, server in servers.items():
                run = serve_stream(
                    server, stream, setup.meter, cfg.slo, cfg.warmup_requests, cfg.drain_requests
                )
                runs[name].append(run)
                print(f"{phase} round {index + 1} {name:<13} {_brief(run)}", flush=True)
        counters = {n: s.prefix_counters() for n, s in servers.items() if hasattr(s, "prefix_counters")}
    finally:
        for server in servers.values():
            if isinstance(server, QueuedServer):
                server.close()
        for engine in engines.values():
            engine.close()
    return {
        name: row(contenders[name], runs[name], setup, counters.get(name, {}), phase) for name in contenders
    }


def _brief(run: ServingRun) -> str:
    w, m = run.window, run.measurement
    met = sum(r.met_slo for r in run.requests) / len(run.requests)
    return (
        f"goodput {w.goodput_tokens / m.joules:.2f} tok/J, {w.output_tokens / m.joules:.2f} tok/J, "
        f"{w.output_tokens / m.seconds:.1f} tok/s, SLO met {met:.0%}"
    )


def row(
    candidate: Candidate,
    runs: list[ServingRun],
    setup: MeasurementSetup,
    prefix: dict[str, float],
    phase: str,
) -> dict[str, Any]:
    stream = setup.stream
    assert stream is not None
    summary = summarize(runs, stream, setup.workload_cfg.rate, prefix)
    judged = [r for run in runs for r in run.requests if run.window.judges(r)]
    rounds: list[dict[str, Any]] = [
        {
            "goodput_tokens_per_joule": run.window.goodput_tokens / run.measurement.joules,
            "tokens_per_joule": run.window.output_tokens / run.measurement.joules,
            "tokens_per_second": run.window.output_tokens / run.measurement.seconds,
            "joules": run.measurement.joules,
            "seconds": run.measurement.seconds,
            "requests_completed": run.window.requests_completed,
            "requests": [
                dataclasses.asdict(r) | {"ttft": r.ttft, "tpot": r.tpot, "e2e": r.e2e} for r in run.requests
            ],
        }
        for run in runs
    ]
    return {
        "label": candidate.label(),
        "settings": candidate.to_dict(),
        "phase": phase,
        "source": runs[0].measurement.source,
        "sources": list(dict.fromkeys(run.measurement.source for run in runs)),
        "goodput_tokens_per_joule": statistics.fmean(r["goodput_tokens_per_joule"] for r in rounds),
        "tokens_per_joule": statistics.fmean(r["tokens_per_joule"] for r in rounds),
        "tokens_per_second": statistics.fmean(r["tokens_per_second"] for r in rounds),
        "ttft_p90_ms": 1000 * percentile(ttft_seconds(judged), 90),  # as measure/serving.py summarizes
        "tpot_p90_ms": 1000 * percentile([r.tpot for r in judged], 90),
        "summary": summary.to_dict(),
        "rounds": rounds,
    }


def ratio(rows: dict[str, dict[str, Any]], name: str, key: str = "goodput_tokens_per_joule") -> str:
    """The selected candidate's figure over `name`'s, round by round; 'inf' when only `name`'s is 0.
    A round where both are 0 (neither met the SLO) has no ratio: it read 'inf', a gain never measured."""
    pairs = list(zip(rows["selected"]["rounds"], rows[name]["rounds"], strict=True))
    values = [s[key] / o[key] if o[key] > 0 else float("inf") for s, o in pairs if s[key] > 0 or o[key] > 0]
    if not values:
        return "n/a (both 0 in every round)"
    mean = statistics.fmean(values)
    figure = "inf" if mean == float("inf") else f"{mean:.1f}x"
    return (
        figure
        if len(values) == len(pairs)
        else f"{figure} ({len(values)} of {len(pairs)} rounds: both 0 in the rest)"
    )


def print_table(
    chat: dict[str, dict[str, Any]],
    agent: dict[str, dict[str, Any]],
    setup: MeasurementSetup,
    idle: float,
    search_seconds: float,
) -> None:
    target, cfg = setup.target, setup.workload_cfg
    print()
    print(
        f"model {setup.model.name} on {target.cpu_model} ({target.cores} cores); idle {idle:.1f} W; "
        f"phase 1 search {search_seconds:.0f} s"
    )
    print(energy_source_line(energy_sources([*chat.values(), *agent.values()])))
    print(
        f"chat stream: {cfg.requests} requests at {cfg.rate:g} req/s ({cfg.arrivals}); SLO p{cfg.slo.percentile} "
        f"TTFT {cfg.slo.ttft_ms} ms, TPOT {cfg.slo.tpot_ms} ms"
    )
    header = f"{'':<13} {'candidate':<44} {'goodput/J':>9} {'tok/J':>7} {'tok/s':>7} {'SLO met':>7} {'J/req':>7} {'TTFT p90':>9} {'TPOT p90':>9}"
    for title, rows in (("chat", chat), ("agent", agent)):
        if not rows:
            continue
        print(f"-- {title}")
        print(header)
        for name, r in rows.items():
            s = r["summary"]
            jpr = f"{s['joules_per_request']:.2f}" if s["joules_per_request"] else "-"
            print(
                f"{name:<13} {r['label']:<44} {r['goodput_tokens_per_joule']:>9.3f} {r['tokens_per_joule']:>7.3f} "
                f"{r['tokens_per_second']:>7.1f} {s['met_slo_fraction']:>7.0%} {jpr:>7} "
                f"{r['ttft_p90_ms']:>7.0f}ms {r['tpot_p90_ms']:>7.0f}ms"
            )
    for name in ("hf-default", "static-batch", "llama.cpp"):
        if name in chat:
            tokens = ratio(chat, name, "tokens_per_joule")
            print(f"(all tokens/J, SLO or not: selected vs {name} {tokens})")
    for name in ("hf-default", "static-batch", "llama.cpp") if chat else ():
        figure = ratio(chat, name) if name in chat else "n/a (not measured)"
        print(f"RATIO serving goodput tok/J vs {name}: {figure}")
    if agent:
        names = sorted({n.rsplit("prefix ", 1)[0] for n in agent}, key=len)  # the selected pair first
        for name in reversed(names):  # the selected pair's line last: it is the RATIO
            on, off = (agent[f"{name}prefix {s}"]["summary"]["joules_per_request"] for s in ("on", "off"))
            saved = f"{1 - on / off:.0%}" if on and off else "n/a"
            label = agent[f"{name}prefix on"]["label"]
            line = f"prefix reuse J/request saved: {saved}"
            print(f"RATIO {line}" if not name else f"({name.strip()}, {label}: {line})")


if __name__ == "__main__":
    main()
