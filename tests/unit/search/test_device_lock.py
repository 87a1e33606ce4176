"""DeviceLock: builds share the device, an energy window has it alone, across processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from optimizer.search.device_lock import DeviceLock, device_id

HOLD = """
import sys, time
from pathlib import Path
from optimizer.search.device_lock import DeviceLock
lock = DeviceLock(Path(sys.argv[1]))
with (lock.exclusive() if sys.argv[2] == "exclusive" else lock.shared()):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold(path: Path, mode: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), mode, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def waited(context: object) -> float:
    start = time.perf_counter()
    with context:  # type: ignore[attr-defined]
        pass
    return time.perf_counter() - start


def test_shared_holders_overlap_but_exclude_a_measurement(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "shared", 1.0)
    assert waited(lock.shared()) < 0.5  # two builds at once
    assert waited(lock.exclusive()) > 0.5  # a window waits for the other's build
    other.wait()


def test_a_measurement_excludes_builds(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "exclusive", 1.0)
    assert waited(lock.shared()) > 0.5
    other.wait()
    assert waited(lock.exclusive()) < 0.5


def test_a_killed_holder_frees_the_device(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "exclusive", 60.0)
    other.kill()
    other.wait()
    assert waited(lock.exclusive()) < 0.5


def test_device_ids(make_target, monkeypatch) -> None:
    assert device_id(make_target()) == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_id(make_target(kind="cuda")) == "gpu-0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_id(make_target(kind="cuda")) == "gpu-3"  # index 0 of the visible ones
