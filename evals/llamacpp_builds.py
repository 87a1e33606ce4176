"""Two or more llama-cpp-python builds side by side on this CPU: does one crash, and which is faster.

    python evals/llamacpp_builds.py --rounds 2 --gguf model.gguf NAME=SITE_DIR [NAME=SITE_DIR ...]

Each SITE_DIR holds one build (`pip install --no-deps --target SITE_DIR llama_cpp_python-*.whl`).
Two builds cannot share a process (both are the module `llama_cpp`), so each measurement is a
child process with its SITE_DIR first on the path, the builds interleaved round by round. A child
measures prompt processing (512 tokens in one batch) and single-sequence greedy decoding (64 tokens
after a 128-token prompt), 3 times each, 2 threads. A child killed by a signal (SIGILL from an
instruction the CPU or VM refuses) is reported as such, not as a number.
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
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=1024, n_batch=512, n_threads=2, n_threads_batch=2,
                      logits_all=True, verbose=False)
tokens = llm.tokenize(open(sys.argv[2]).read().encode())[:512]
out = {"system": llama_cpp.llama_print_system_info().decode().strip(), "pp": [], "tg": []}
for _ in range(3):
    llm.reset(); t = time.perf_counter(); llm.eval(tokens)
    out["pp"].append(len(tokens) / (time.perf_counter() - t))
    llm.reset(); llm.eval(tokens[:128]); greedy = []
    t = time.perf_counter()
    for _ in range(64):
        greedy.append(int(llm.scores[llm.n_tokens - 1].argmax())); llm.eval([greedy[-1]])
    out["tg"].append(64 / (time.perf_counter() - t))
out["greedy"] = greedy[:16]
print(json.dumps(out))
"""


def measure(site: Path, gguf: Path) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(gguf), str(TEXT)], env=env, capture_output=True, text=True
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
    print(f"\n{'build':<12} {'prompt tok/s':>13} {'decode tok/s':>13} {'prompt x':>9} {'decode x':>9}")
    medians: dict[str, list[float]] = {}
    for name, runs in results.items():
        measured = [r for r in runs if "pp" in r]
        if len(measured) < len(runs):
            print(f"{name:<12} {[r.get('killed') or r.get('failed') for r in runs if 'pp' not in r]}")
            continue
        medians[name] = [statistics.median(v for r in measured for v in r[k]) for k in ("pp", "tg")]
    base = next(iter(medians.values()), None)  # ratios to the first build that ran
    for name, (pp, tg) in medians.items():
        ratios = f"{pp / base[0]:>9.2f} {tg / base[1]:>9.2f}" if base else ""
        print(f"{name:<12} {pp:>13.1f} {tg:>13.1f} {ratios}")


if __name__ == "__main__":
    main()
