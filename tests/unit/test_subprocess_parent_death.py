"""A subprocess that wattsmith starts during a run (the genai model builder, llama.cpp's converter)
ends with its parent, even one killed outright (SIGKILL: the out-of-memory killer, a launcher's
kill after its grace), instead of running on beside the next run's energy windows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimizer.processes import process_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

ROOT = Path(__file__).resolve().parents[2]
# writes its pid (written aside, then renamed: never read half-written) and sleeps
SLEEPER = """
import os, sys, time
path = os.environ["SLEEPER_PID_FILE"]
with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(path + ".tmp", path)
time.sleep(120)
"""
# starts the sleeper in the way `case` names, and SIGKILLs itself once the sleeper runs
PARENT = """
import os, signal, subprocess, sys, threading, time
from pathlib import Path

case, work = sys.argv[1], Path(sys.argv[2])
pid_file = Path(os.environ["SLEEPER_PID_FILE"])
sleeper = work / "sleeper.py"


def kill_self_once_the_child_runs() -> None:
    while not pid_file.exists():
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)


def model_spec():
    from optimizer.model import ModelShape, ModelSpec

    model_dir = work / "model"
    model_dir.mkdir()
    shape = ModelShape(1, 1, 1, 1, 1, 1, 1)
    return ModelSpec("m", str(model_dir), model_dir, "hf-dir", "0" * 64, False, None, shape)


threading.Thread(target=kill_self_once_the_child_runs, daemon=True).start()
if case == "plain":
    subprocess.run([sys.executable, str(sleeper)])
elif case == "helper":
    from optimizer.processes import killed_with_parent

    subprocess.run([sys.executable, str(sleeper)], preexec_fn=killed_with_parent())
elif case == "ort-genai":
    from optimizer.backends.ort_genai import backend
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings

    backend.builder_command = lambda model_dir, out_dir, settings: [sys.executable, str(sleeper)]
    backend.ensure_build(model_spec(), OrtGenaiSettings(), work / "cache")
elif case == "llamacpp":
    os.environ["WATTSMITH_HF_TO_GGUF"] = str(sleeper)  # llama.cpp's converter
    from optimizer.backends.llamacpp.weights import source_gguf

    source_gguf(model_spec(), work / "cache")
time.sleep(60)  # not reached: killed above
"""


def start_and_kill_parent(case: str, tmp_path: Path) -> int:
    """The sleeper's pid, once its parent (started for `case`) killed itself."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    pid_file = tmp_path / "sleeper.pid"
    env = os.environ | {"SLEEPER_PID_FILE": str(pid_file), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "parent.log"
    with log.open("w") as handle:  # not a pipe: an orphan would hold it open
        parent = subprocess.run(
            [sys.executable, "-c", PARENT, case, str(tmp_path)],
            env=env,
            stdout=handle,
            stderr=handle,
            timeout=120,
        )
    assert parent.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    return int(pid_file.read_text())


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("case", ["helper", "ort-genai", "llamacpp"])
def test_the_child_dies_with_its_killed_parent(case: str, tmp_path: Path) -> None:
    child = start_and_kill_parent(case, tmp_path)
    try:
        assert gone_within(child, 5.0), f"the {case} subprocess {child} outlived its killed parent"
    finally:
        if process_alive(child):
            os.kill(child, signal.SIGKILL)


def test_without_the_helper_the_child_outlives_its_parent(tmp_path: Path) -> None:
    """What the tests above guard against: an orphan, left running."""
    child = start_and_kill_parent("plain", tmp_path)
    try:
        assert not gone_within(child, 1.0)
    finally:
        os.kill(child, signal.SIGKILL)
