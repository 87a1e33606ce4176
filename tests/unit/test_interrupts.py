"""SIGTERM as Ctrl-C (optimizer/interrupts.py), in child processes: signals reach the main thread."""

from __future__ import annotations

import subprocess
import sys


def run_child(body: str) -> subprocess.CompletedProcess[str]:
    code = "import os, signal, sys, time\nfrom optimizer.interrupts import sigterm_interrupts\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_sigterm_after_the_interrupted_block_does_not_kill_the_exiting_process() -> None:
    child = run_child(
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # a late one: a process-group kill after the clean-up\n"
        "    time.sleep(0.2)\n"
        "    sys.exit(130)\n"
    )
    assert child.stdout.strip() == "interrupted"
    assert child.returncode == 130, child.stderr  # with the old handler restored: -15


def test_without_a_sigterm_the_previous_handler_comes_back() -> None:
    child = run_child(
        "def mine(signum, frame): print('mine', flush=True)\n"
        "signal.signal(signal.SIGTERM, mine)\n"
        "with sigterm_interrupts():\n"
        "    assert signal.getsignal(signal.SIGTERM) is not mine\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "mine"
