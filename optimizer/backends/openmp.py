"""The calling thread's OpenMP team, released so that the generation loop thread has the cores."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _openmp_pause() -> Any:
    """`omp_pause_resource_all` of the OpenMP runtime torch has loaded, or None (not Linux, none)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    for line in maps.read_text().splitlines():
        path = line.rsplit(maxsplit=1)[-1]
        if Path(path).name.startswith(("libgomp", "libiomp", "libomp")):
            function = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
            if function is not None:
                function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
            return function
    return None


def release_openmp_threads() -> None:
    """Release the calling thread's idle OpenMP workers, so that the loop thread's team has the cores.
    Call it only while no other thread computes: a release in the middle of another thread's
    work made each of its parallel ops rebuild a team (measured: 4.3 s against 0.6 s).

    torch runs an op on the OpenMP team of the thread that calls it, so the generation loop thread
    has a team of its own next to the caller's. When the two together have more threads than there
    are cores, libgomp stops letting idle workers spin and every parallel op pays a futex wake-up:
    on 2 cores a decode step of SmolLM2-135M (bf16, 16 requests) took 56 ms on the loop thread and
    40 ms with the caller's team released, as on the caller's own thread (188 -> 249 tok/s for 16 x
    (64 + 32) tokens). The team comes back at the caller's next parallel op, hence a release before
    every batch.
    """
    pause = _openmp_pause()
    if pause is not None:
        pause(1)  # omp_pause_soft: the idle threads end; nothing else is torn down
