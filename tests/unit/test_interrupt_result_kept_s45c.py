"""An interrupt that lands once a candidate's result exists (the evaluator's tail: its quality
lease given up, its watch joined; or the store's append) is deferred until the result is stored,
then still ends the run (search/runner.py, interrupts.deferred_interrupts); the measurement itself
stays interruptible. In child processes, as test_interrupt_not_lost: signals reach the main
thread, and a SIGTERM after an interrupt stays ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from unit.test_interrupt_not_lost import run_child

SEARCH = """\
from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import MEASURED
from optimizer.search.runner import run_search
from optimizer.store import TrialStore
from unit.factories import candidate_result, performance_result, quality_result, torch_candidate

def interrupt():
    os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns

def search(evaluator, cands):
    try:
        with sigterm_interrupts():
            run_search(cands, [], cands[0], evaluator, SearchConfig(), QualityConfig(),
                       progress=lambda _: None)
        print('finished', flush=True)
    except KeyboardInterrupt:
        print('interrupted', flush=True)
    stored = TrialStore(sys.argv[1], 'ctx')  # as a resumed run reads it
    print('stored', *[c.batch_size for c in cands if stored.get(c) is not None], flush=True)
"""

FAKE_EVALUATOR = """\
where = sys.argv[2]

class Store(TrialStore):
    def append(self, result):
        if where == 'append':
            interrupt()  # as the append starts: before, it raised here and the row was lost
        super().append(result)

class Evaluator:
    def __init__(self, store):
        self.store = store
    def evaluate(self, candidate, role='candidate', stop_below=None):
        result = candidate_result(candidate=candidate, status=MEASURED, role=role,
            quality=quality_result(mean_kl=0.001), seconds=0.01,
            performance=performance_result(goodput_tokens_per_joule=candidate.batch_size))
        if where == 'return':
            interrupt()  # the result made, on its way back to the runner
        return result

cands = [torch_candidate(batch_size=b) for b in (1, 2, 4)]
search(Evaluator(Store(sys.argv[1], 'ctx')), cands)
"""

REAL_EVALUATOR = """\
from optimizer.search import evaluate as evaluate_module
from optimizer.search.watchdog import Watchdog
from optimizer.store import QUALITY_CLAIM_PREFIX
from unit.search.test_evaluate import FakeEngine
from unit.test_watchdog import make_evaluator
where = sys.argv[2]

class Store(TrialStore):
    quality_stored = False

    def put_quality(self, numerics_key, quality):  # mid-measurement: releases the same lease
        super().put_quality(numerics_key, quality)
        self.quality_stored = True

    def release(self, key):
        if where == 'tail' and self.quality_stored and key.startswith(QUALITY_CLAIM_PREFIX):
            interrupt()  # the evaluator's tail, its result made: before, it raised here
        super().release(key)

def build_engine(model, candidate, target, workdir):
    if where == 'build' and candidate.settings.precision == 'bf16':
        interrupt()  # the measurement itself: raised at once
        print('not interrupted', flush=True)
    return FakeEngine(candidate.settings, [])

evaluate_module.build_engine = build_engine
store = Store(sys.argv[1], 'ctx')
evaluator = make_evaluator(Path(sys.argv[1]).parent, store, Watchdog(), timeout_minutes=5)
cands = [torch_candidate(batch_size=b, precision='bf16') for b in (1, 2, 4)]
search(evaluator, cands)
"""


@pytest.mark.parametrize("where", ["return", "append"])
def test_a_result_made_before_an_interrupt_is_stored_and_the_run_still_ends(
    tmp_path: Path, where: str
) -> None:
    child = run_child(SEARCH + FAKE_EVALUATOR, str(tmp_path / "t.db"), where)
    assert child.stdout.splitlines() == ["interrupted", "stored 1"], child.stderr
    assert child.returncode == 0, child.stderr


def test_an_interrupt_in_the_real_evaluators_tail_keeps_its_result(tmp_path: Path) -> None:
    child = run_child(
        "from pathlib import Path\n" + SEARCH + REAL_EVALUATOR, str(tmp_path / "t.db"), "tail", timeout=120
    )
    assert child.stdout.splitlines() == ["interrupted", "stored 1"], child.stderr


def test_the_measurement_itself_stays_interruptible(tmp_path: Path) -> None:
    child = run_child(
        "from pathlib import Path\n" + SEARCH + REAL_EVALUATOR, str(tmp_path / "t.db"), "build", timeout=120
    )
    assert child.stdout.splitlines() == ["interrupted", "stored"], child.stderr
