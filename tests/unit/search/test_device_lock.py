"""DeviceLock: builds share the device, an energy window has it alone, across processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from optimizer.search.device_lock import DeviceLock, device_id

HOLD = """
import sys
from pathlib import Path
from optimizer.search.device_lock import DeviceLock
lock = DeviceLock(Path(sys.argv[1]))
with (lock.exclusive() if sys.argv[2] == "exclusive" else lock.shared()):
    print("held", flush=True)
    sys.stdin.readline()  # until the test lets go (or kills it)
"""

# Judged by what happened, not by how long it took: the other process holds the lock until the
# test lets go, so a wait is "still waiting while it holds", not "waited more than 0.5 s" (which
# read short whenever this process was descheduled between the holder's start and the wait).
WAIT = 60.0  # a lock that should be free is taken at once; this only ends a broken test


def hold(path: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def let_go(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=WAIT)  # its stdin closed: it leaves the lock and ends
    assert proc.returncode == 0


def taking(context: AbstractContextManager[None]) -> threading.Event:
    """Takes and leaves `context` on a thread; the event is set once it was taken."""
    taken = threading.Event()

    def take() -> None:
        with context:
            taken.set()

    threading.Thread(target=take, daemon=True).start()
    return taken


def test_shared_holders_overlap_but_exclude_a_measurement(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "shared")
    assert taking(lock.shared()).wait(WAIT)  # two builds at once
    window = taking(lock.exclusive())
    assert not window.wait(0.5)  # a window waits for the other's build...
    let_go(other)
    assert window.wait(WAIT)  # ...and runs once it is done


def test_a_measurement_excludes_builds(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "exclusive")
    build = taking(lock.shared())
    assert not build.wait(0.5)
    let_go(other)
    assert build.wait(WAIT)
    assert taking(lock.exclusive()).wait(WAIT)


def test_a_killed_holder_frees_the_device(tmp_path: Path) -> None:
    lock = DeviceLock(tmp_path / "cpu.lock")
    other = hold(lock.path, "exclusive")
    other.kill()
    other.communicate()
    assert taking(lock.exclusive()).wait(WAIT)


def test_device_ids(make_target, monkeypatch) -> None:
    assert device_id(make_target()) == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_id(make_target(kind="cuda")) == "gpu-0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device_id(make_target(kind="cuda")) == "gpu-3"  # index 0 of the visible ones
