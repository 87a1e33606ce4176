"""Turns on a device between the workers of one host.

An energy window must have the device to itself: a second process working on the same CPU (or
GPU) would add its energy to a package counter, slow the candidate, and skew its latency. Builds
and quality probes may overlap each other. So a worker holds the device *shared* while it builds
and scores, and *exclusive* while it warms up and measures (idle power included): a window never
overlaps any other worker's work on that device.

The lock is an flock on a file under the host's temp dir, so it binds every process on the host
(local workers, Ray tasks, several `optimize` runs) and dies with its holder.
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optimizer.measure.nvml_device import cuda_visible_devices
from optimizer.target import TargetSpec


class DeviceLock:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_target(cls, target: TargetSpec) -> DeviceLock:
        return cls(Path(tempfile.gettempdir()) / f"wattsmith-device-{device_id(target)}.lock")

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Building and scoring: other workers may do the same, nobody measures meanwhile."""
        with self._flock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Measuring: nobody else uses the device meanwhile."""
        with self._flock(fcntl.LOCK_EX):
            yield

    @contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # each acquisition opens its own file description: flock locks belong to it
        with self.path.open("a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def device_id(target: TargetSpec) -> str:
    """The physical device on this host: `cpu`, or the GPU behind CUDA_VISIBLE_DEVICES (Ray and the
    local launcher give each worker one GPU that it sees as index 0)."""
    if target.gpu is None:
        return "cpu"
    visible = cuda_visible_devices()
    index = target.gpu.index
    physical = visible[index] if index < len(visible) else str(index)
    return f"gpu-{physical}"
