"""An interrupt swallowed by a finalizer, then an error of what it tore down: the run ends as
interrupted (130), not as a crash (3). In child processes: signals reach the main thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# os.kill handles a signal sent to its own process before it returns: inside __del__, where
# Python swallows the KeyboardInterrupt ("Exception ignored in ...")
PRELUDE = """\
import os, signal, sys
from optimizer.interrupts import sigterm_interrupts

class Engine:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)

def swallowed_then_broken():
    engine = Engine()
    del engine
    raise RuntimeError("generation manager is not running")
"""


def run_child(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + body], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_block_ends_interrupted_with_the_error_as_its_cause() -> None:
    child = run_child(
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        swallowed_then_broken()\n"
        "except KeyboardInterrupt as interrupt:\n"
        "    print(type(interrupt.__cause__).__name__, flush=True)\n"
        "    sys.exit(130)\n"
    )
    assert child.returncode == 130, child.stderr
    assert child.stdout.strip() == "RuntimeError"


def test_an_error_without_an_interrupt_passes_unchanged() -> None:
    child = run_child(
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        raise RuntimeError('a bug')\n"
        "except RuntimeError as error:\n"
        "    print(error, flush=True)\n"
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "a bug"


def test_the_cli_exits_130_not_as_crashed() -> None:
    child = run_child(
        "from optimizer import cli\n"
        "cli._run = lambda args: swallowed_then_broken()\n"
        "sys.exit(cli.main(['search.budget_minutes=1']))\n"
    )
    assert child.returncode == 130, child.stderr
    assert "interrupted: " in child.stderr and "crashed" not in child.stderr
