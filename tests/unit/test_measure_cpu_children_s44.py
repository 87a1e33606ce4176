"""A tracked live process's finished children (a rank's workers) are in its cutime/cstime, not in
its own utime/stime: left out, their CPU time is missing from the estimate while the process
lives, and all of it lands in the window that reaps it (RUSAGE_CHILDREN takes descendants)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from optimizer.measure import cpu_time

# the tracked child: on each line read, a grandchild burns ~0.3 s of CPU and is waited for
CHILD = """
import subprocess, sys
for line in sys.stdin:
    subprocess.run([sys.executable, "-c", "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass"])
    print("done", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/stat")
def test_a_tracked_process_finished_children_count_while_it_lives_and_not_again_at_its_reap() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    cpu_time.track_processes([child.pid])
    try:
        before = cpu_time.own_cpu_seconds()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        during = cpu_time.own_cpu_seconds() - before
        child.stdin.close()
        child.wait(10)
        reaped = cpu_time.own_cpu_seconds()  # its pid is gone: RUSAGE_CHILDREN holds it now
    finally:
        cpu_time.untrack_processes([child.pid])
        child.kill()
    assert during >= 0.25, during  # the grandchild's 0.3 s
    assert reaped - before - during < 0.2, reaped - before - during  # not counted a second time
