"""Two or more llama-cpp-python builds side by side on this CPU: does one crash, and which is faster.

    python evals/llamacpp_builds.py --rounds 2 --gguf model.gguf NAME=SITE_DIR [NAME=SITE_DIR ...]

Each SITE_DIR holds one build (`pip install --no-deps --target SITE_DIR llama_cpp_python-*.whl`).
Two builds cannot share a process (both are the module `llama_cpp`), so each measurement is a
child process with its SITE_DIR first on the path, the builds interleaved round by round. A child
measures, 3 times each, 2 threads:
- prompt processing: 512 tokens in one batch;
- single-sequence greedy decoding: 64 tokens after a 128-token prompt;
- a batch of 16 requests through wattsmith's llama.cpp engine (the path `optimize` measures):
  128-token prompts, 64 new tokens each, generated tokens per second of the whole batch;
and once the mean negative log-likelihood of the 512 prompt tokens (nats per token), which says
whether a build computes the same model. A child killed by a signal (SIGILL from an instruction the
CPU or VM refuses) is reported as such, not as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "README.md"  # any long English text: only its token count matters

CHILD = """
import json, sys, time
from pathlib import Path
import numpy as np
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=1024, n_batch=512, n_threads=2, n_threads_batch=2,
                      logits_all=True, verbose=False)
tokens = llm.tokenize(open(sys.argv[2]).read().encode())[:512]
out = {"system": llama_cpp.llama_print_system_info().decode().strip(), "pp": [], "tg": [], "b16": []}
for _ in range(3):
    llm.reset(); t = time.perf_counter(); llm.eval(tokens)
    out["pp"].append(len(tokens) / (time.perf_counter() - t))
    if "nll" not in out:
        logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        out["nll"] = float(np.mean(log_z - logits[np.arange(len(tokens) - 1), tokens[1:]]))
    llm.reset(); llm.eval(tokens[:128]); greedy = []
    t = time.perf_counter()
    for _ in range(64):
        greedy.append(int(llm.scores[llm.n_tokens - 1].argmax())); llm.eval([greedy[-1]])
    out["tg"].append(64 / (time.perf_counter() - t))
out["greedy"] = greedy[:16]
del llm
sys.path.insert(0, sys.argv[3])
import torch
from optimizer.backends.llamacpp.engine import LlamaCppEngine
from optimizer.backends.llamacpp.settings import LlamaCppSettings
engine = LlamaCppEngine(Path(sys.argv[1]), LlamaCppSettings(), threads=2, sequences=16)
prompts = torch.tensor([tokens[i * 16 : i * 16 + 128] for i in range(16)])  # 16 distinct prompts
engine.generate(prompts[:, :32], 4)  # warm-up: makes the context
for _ in range(3):
    out["b16"].append(16 * 64 / engine.generate(prompts, 64).total_seconds)
engine.close()
print(json.dumps(out))
"""


def measure(site: Path, gguf: Path) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(gguf), str(TEXT), str(REPO)],
        env=env,
        capture_output=True,
        text=True,
    )
    if run.returncode < 0:
        return {"killed": signal.Signals(-run.returncode).name}
    if run.returncode != 0:
        return {"failed": run.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("builds", nargs="+", help="NAME=SITE_DIR")
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    builds = dict(item.split("=", 1) for item in args.builds)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    for round_index in range(args.rounds):
        for name, site in builds.items():
            result = measure(Path(site), args.gguf)
            results[name].append(result)
            print(f"round {round_index + 1} {name}: {json.dumps(result)}", flush=True)
    metrics = ("pp", "tg", "b16")
    print(
        f"\n{'build':<12} {'prompt tok/s':>13} {'decode tok/s':>13} {'b16 tok/s':>10} {'NLL':>7}  x first build"
    )
    medians: dict[str, list[float]] = {}
    for name, runs in results.items():
        measured = [r for r in runs if "pp" in r]
        if len(measured) < len(runs):
            print(f"{name:<12} {[r.get('killed') or r.get('failed') for r in runs if 'pp' not in r]}")
            continue
        medians[name] = [statistics.median(v for r in measured for v in r[k]) for k in metrics]
        medians[name].append(statistics.median(r["nll"] for r in measured))
    if not medians:  # nothing to compare: a failed run, not a table (its status read 0)
        raise SystemExit("no build measured in every round: each one's failure is above")
    base = next(iter(medians.values()))  # ratios to the first build that ran
    for name, (pp, tg, b16, nll) in medians.items():
        ratios = "  ".join(f"{v / b:.2f}" for v, b in zip((pp, tg, b16), base, strict=False))
        print(f"{name:<12} {pp:>13.1f} {tg:>13.1f} {b16:>10.1f} {nll:>7.4f}  {ratios}")


if __name__ == "__main__":
    main()
