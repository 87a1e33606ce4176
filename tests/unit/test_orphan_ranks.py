"""A layout's rank or a local search worker whose parent is killed outright (SIGKILL) ends too,
also when the parent died while the child was still starting (importing its main module, torch),
before it could ask the kernel for a parent-death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizer.processes import process_alive

# The parent: starts one child through the real entry point (spawn, as torch.multiprocessing and
# local_processes do), then SIGKILLs itself. ORPHAN_TEST_RACE holds the child, before its entry
# point runs, until the parent is gone: the racy moment, made certain.
PARENT = """
import multiprocessing, os, signal, sys, time
from pathlib import Path

MARKS = Path(os.environ["ORPHAN_TEST_MARKS"])


def work(spec):  # stands for run_worker: measuring, its leases given up on the way out
    MARKS.joinpath("working").touch()
    try:
        time.sleep(60)
    finally:
        MARKS.joinpath("released").touch()


def loading(local_rank, plan):  # stands for start_rank: loading the model, then serving
    MARKS.joinpath("loading").touch()
    time.sleep(60)


if __name__ == "__mp_main__":  # the spawned child imports this script before its entry point runs
    if os.environ.get("ORPHAN_TEST_RACE"):
        while os.getppid() == int(os.environ["ORPHAN_TEST_PARENT"]):
            time.sleep(0.01)
    from optimizer.backends.torch_parallel import ranks

    ranks.start_rank = loading

if __name__ == "__main__":
    os.environ["ORPHAN_TEST_PARENT"] = str(os.getpid())
    context = multiprocessing.get_context("spawn")
    if sys.argv[1] == "rank":
        from optimizer.backends.torch_parallel.ranks import rank_main

        child = context.Process(target=rank_main, args=(0, None, [None], None))
        started = "loading"
    else:
        from optimizer.search.launchers import _report_through

        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_report_through, args=(work, None, sender))
        started = "working"
    child.start()
    MARKS.joinpath("child").write_text(str(child.pid))
    while not os.environ.get("ORPHAN_TEST_RACE") and not MARKS.joinpath(started).exists():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def orphan(tmp_path: Path, kind: str, race: bool) -> int:
    """Run the parent until it is killed; the pid of the child it left."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "ORPHAN_TEST_MARKS": str(tmp_path)}
    if race:
        env["ORPHAN_TEST_RACE"] = "1"
    with (tmp_path / "parent.err").open("w") as errors:  # not a pipe: the orphan would hold it open
        parent = subprocess.run(
            [sys.executable, str(script), kind], env=env, stdout=errors, stderr=errors, timeout=60
        )
    assert parent.returncode == -signal.SIGKILL, (tmp_path / "parent.err").read_text()
    return int((tmp_path / "child").read_text())


def assert_ends(pid: int, within_seconds: float = 10.0) -> None:
    try:
        deadline = time.monotonic() + within_seconds
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid), f"child {pid} outlived its parent"
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_whose_parent_died_while_it_started_ends(tmp_path: Path) -> None:
    assert_ends(orphan(tmp_path, "rank", race=True))
    assert not (tmp_path / "loading").exists()  # it never loaded the model


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_parent_died_while_it_started_ends(tmp_path: Path) -> None:
    assert_ends(orphan(tmp_path, "worker", race=True))
    assert not (tmp_path / "working").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_working_worker_whose_parent_dies_ends_as_if_interrupted(tmp_path: Path) -> None:
    assert_ends(orphan(tmp_path, "worker", race=False))
    assert (tmp_path / "released").exists()  # SIGTERM: a KeyboardInterrupt, finally blocks run
