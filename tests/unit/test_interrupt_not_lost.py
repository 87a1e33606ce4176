"""An interrupt that lands inside a finalizer is not lost (optimizer/interrupts.py): Python swallows
the KeyboardInterrupt raised there ("Exception ignored in ..."), so the interrupt is recorded and
raised again at the next candidate or round, and a later signal still interrupts. In child
processes: signals reach the main thread, and the swallowed traceback stays out of pytest."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer import cli

TESTS = Path(__file__).resolve().parents[1]

# os.kill handles a signal sent to its own process before it returns: inside __del__, like the
# SIGTERM that lands while transformers' ContinuousBatchProcessor.__del__ runs gc.collect()
# A shell that starts pytest in the background (`cmd &` without job control) ignores SIGINT, and
# the children would inherit that: they get Python's own handler, as a terminal's process has.
PRELUDE = """\
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from optimizer.interrupts import sigterm_interrupts

class Engine:
    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)

def swallowed(signum=signal.SIGTERM):
    engine = Engine(signum)
    del engine
"""


def run_child(body: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + body, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupt_swallowed_by_a_finalizer_raises_at_the_next_boundary(signum: str) -> None:
    child = run_child(
        "from optimizer.interrupts import raise_if_interrupted\n"
        "try:\n"
        "    with sigterm_interrupts():\n"
        f"        swallowed(signal.{signum})\n"
        "        print('went on', flush=True)\n"
        "        raise_if_interrupted()  # the next candidate\n"
        "        print('not stopped', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    assert "Exception ignored" in child.stderr  # it did land inside the finalizer
    assert child.stdout.split() == ["went", "on"]
    assert child.returncode == 130, child.stderr


def test_a_sigterm_after_a_swallowed_one_still_interrupts() -> None:
    """Before, the first one had set SIGTERM to ignored: the coordinator's own SIGTERM was lost
    too, and a worker measured on until the grace period's SIGKILL (a death of its candidate)."""
    child = run_child(
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        swallowed()\n"
        "        os.kill(os.getpid(), signal.SIGTERM)  # mid-measurement: no boundary for long\n"
        "        print('not stopped', flush=True)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n",
        timeout=30,
    )
    assert child.stdout.strip() == "interrupted"
    assert child.returncode == 130, child.stderr


def test_one_swallowed_after_the_last_boundary_ends_the_block_interrupted() -> None:
    child = run_child(
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        swallowed()\n"
        "    print('finished', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # a late one stays ignored, as before\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    assert child.stdout.strip() == "interrupted"
    assert child.returncode == 130, child.stderr


def test_a_search_stops_before_its_next_candidate(tmp_path: Path) -> None:
    """The search's own boundary: the SIGTERM lands in a finalizer while the first candidate is
    measured, and no other candidate is started."""
    child = run_child(
        "from optimizer.config import QualityConfig, SearchConfig\n"
        "from optimizer.results import MEASURED\n"
        "from optimizer.search.runner import run_search\n"
        "from optimizer.store import TrialStore\n"
        "from unit.factories import candidate_result, performance_result, quality_result, torch_candidate\n"
        "class Evaluator:\n"
        "    def __init__(self, store):\n"
        "        self.store = store\n"
        "    def evaluate(self, candidate, role='candidate', stop_below=None):\n"
        "        print('measuring', candidate.batch_size, flush=True)\n"
        "        swallowed()  # an engine torn down at the end of the measurement\n"
        "        return candidate_result(candidate=candidate, status=MEASURED, role=role,\n"
        "            quality=quality_result(mean_kl=0.001), seconds=0.01,\n"
        "            performance=performance_result(goodput_tokens_per_joule=candidate.batch_size))\n"
        "cands = [torch_candidate(batch_size=b) for b in (1, 2, 4)]\n"
        "evaluator = Evaluator(TrialStore(sys.argv[1], 'ctx'))\n"
        "try:\n"
        "    with sigterm_interrupts():\n"
        "        run_search(cands, [], cands[0], evaluator, SearchConfig(), QualityConfig(),\n"
        "                   progress=lambda _: None)\n"
        "    print('finished', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n",
        str(tmp_path / "t.db"),
    )
    assert child.stdout.splitlines() == ["measuring 1"], child.stderr
    assert child.returncode == 130, child.stderr


def test_the_finalists_stop_before_their_next_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The finalists' boundary, the interrupt recorded as the handler records it when its raise is
    swallowed (the signal itself is the tests above')."""
    from dataclasses import replace

    from optimizer import interrupts
    from optimizer.config import SearchConfig
    from optimizer.search.finalists import remeasure

    from .test_finalists import FakeEvaluator, measured

    monkeypatch.setattr(interrupts, "_interrupted", False, raising=False)

    class Swallowing(FakeEvaluator):
        def evaluate(self, candidate, role="candidate"):  # type: ignore[no-untyped-def]
            interrupts._interrupted = True  # type: ignore[attr-defined]
            return super().evaluate(candidate, role)

    evaluator = Swallowing()
    pool = [replace(measured(b, [float(b)]), seconds=1.0) for b in (4, 16, 8)]
    with pytest.raises(KeyboardInterrupt):
        remeasure(evaluator, pool, SearchConfig(finalists=3, finalist_rounds=2))  # type: ignore[arg-type]
    assert evaluator.order == [16]


def test_the_cli_exits_130_when_ctrl_c_was_swallowed() -> None:
    child = run_child(
        "from optimizer import cli\n"
        "def run(args):\n"
        "    swallowed(signal.SIGINT)\n"
        "    return 0\n"
        "cli._run = run\n"
        "sys.exit(cli.main(['search.budget_minutes=1']))\n"
    )
    assert child.returncode == 130, child.stderr
    assert "run the same command to resume" in child.stderr


@pytest.fixture
def _restore_logging():
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.usefixtures("_restore_logging")
def test_an_interrupted_verify_does_not_speak_of_a_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import optimizer.verify

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(optimizer.verify, "verify_recipe", interrupted)
    assert cli.main(["verify", "recipe.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: ") and "store" not in err and "resume" not in err


@pytest.mark.usefixtures("_restore_logging")
def test_help_lists_the_interrupted_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "130 interrupted" in capsys.readouterr().out
