"""One thread hashing 8 MiB every 0.1 s for N seconds: its rate by the wall clock and by its own
CPU time, and the VM's steal share over the whole run. Run at 12:52 UTC on 2026-12-06 from the repo
root as `python <this file> 40` (ad hoc, before evals/cpu_probe.py existed; /proc/stat was read by
the function `cpu_steal` then, `cpu_times` now); its output, copied from the terminal:

    wall n 362 median MiB/s 1054 below 0.8x: 123 p5 0.37 min 0.14
    cpu n 362 median MiB/s 1099 below 0.8x: 4 p5 0.89 min 0.64
    steal share 0.01848405904974569
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from optimizer.measure import speed  # noqa: E402
from optimizer.measure.cpu_time import cpu_times  # noqa: E402


def one(passes: int = 8) -> tuple[float, float]:
    buffer = speed._buffer()
    wall, cpu = time.perf_counter(), time.thread_time()
    digest = hashlib.sha256()
    for _ in range(passes):
        digest.update(buffer)
    return passes / (time.perf_counter() - wall), passes / (time.thread_time() - cpu)


def main() -> None:
    walls, cpus = [], []
    before, start = cpu_times(), time.perf_counter()
    while time.perf_counter() - start < float(sys.argv[1]):
        wall, cpu = one()
        walls.append(wall)
        cpus.append(cpu)
        time.sleep(0.1)
    after = cpu_times()
    for name, values in (("wall", walls), ("cpu", cpus)):
        median = statistics.median(values)
        print(
            name,
            "n",
            len(values),
            "median MiB/s",
            round(median),
            "below 0.8x:",
            sum(v < 0.8 * median for v in values),
            "p5",
            round(sorted(values)[len(values) // 20] / median, 2),
            "min",
            round(min(values) / median, 2),
        )
    if before and after:
        print("steal share", (after.steal - before.steal) / max(after.total - before.total, 1))


if __name__ == "__main__":
    main()
