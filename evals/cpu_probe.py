"""How steady the cores' speed probe is on this machine, against a wall-clock form of it, and what
the CPU meters' window shares (steal, other processes) read with and without a competing process.

    python evals/cpu_probe.py --seconds 60 --out evals/results/<date>-cpu-speed-probe/probe.json

Per condition (quiet; then one busy process beside this one) it samples every `--interval` s:
wattsmith's probe (MiB hashed per CPU second, `optimizer.measure.speed`) and the same hashing
timed by the wall clock. A probe meant to flag slowed windows must stay near its median on a quiet
machine (few false flags) and must not read time-sharing, which the window shares measure over
the whole window instead. Prints a table and the ratios last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from optimizer.config import TargetConfig
from optimizer.measure import speed
from optimizer.measure.energy import EstimateMeter
from optimizer.target import detect_target


def wall_rate(threads: int) -> float:
    """The probe's hashing (median of its repeats) timed by the wall clock: MiB/s per thread."""
    repeats = []
    for _ in range(speed.PROBE_REPEATS):
        workers = [
            threading.Thread(target=speed._hash, args=(speed.PROBE_PASSES, [])) for _ in range(threads)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        repeats.append(speed.PROBE_PASSES * speed.PROBE_BUFFER_BYTES / 2**20 / (time.perf_counter() - start))
    return statistics.median(repeats)


def sample(seconds: float, interval: float, meter: EstimateMeter) -> dict[str, Any]:
    threads = speed.probe_threads()
    cpu: list[float] = []
    wall: list[float] = []
    with meter.window() as window:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            cpu.append(speed.cpu_probe_mibps(threads))
            wall.append(wall_rate(threads))
            time.sleep(interval)
    return {"cpu_time": cpu, "wall_clock": wall, "window_warnings": window.warnings}


def summary(values: list[float]) -> dict[str, float]:
    median = statistics.median(values)
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": median,
        "p5_ratio": ordered[len(ordered) // 20] / median,
        "min_ratio": ordered[0] / median,
        "max_ratio": ordered[-1] / median,
        "below_slow_probe": sum(v < speed.SLOW_PROBE * median for v in values) / len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per condition")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    target = detect_target(TargetConfig(kind="cpu"))
    meter = EstimateMeter(target.cores, target.cpu_active_watts_per_core, target.cpu_idle_watts_per_core)
    results: dict[str, Any] = {
        "cpu": target.cpu_model,
        "cores": target.cores,
        "threads": speed.probe_threads(),
    }
    results["quiet"] = sample(args.seconds, args.interval, meter)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        results["one_busy_process"] = sample(args.seconds, args.interval, meter)
    finally:
        hog.kill()
        hog.wait()
    print(f"{'condition':<18} {'probe':<11} {'median':>8} {'p5':>6} {'min':>6} {'< 0.8x':>7}")
    for condition in ("quiet", "one_busy_process"):
        for kind in ("cpu_time", "wall_clock"):
            s = summary(results[condition][kind])
            results[condition][f"{kind}_summary"] = s
            print(
                f"{condition:<18} {kind:<11} {s['median']:>8.0f} {s['p5_ratio']:>6.2f} "
                f"{s['min_ratio']:>6.2f} {s['below_slow_probe']:>7.1%}"
            )
        print(f"{condition:<18} window flags: {results[condition]['window_warnings'] or 'none'}")
    for kind in ("cpu_time", "wall_clock"):
        quiet = results["quiet"][f"{kind}_summary"]["median"]
        busy = results["one_busy_process"][f"{kind}_summary"]["median"]
        print(f"RATIO {kind} probe median, one busy process vs quiet: {busy / quiet:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
