"""An interrupt that lands once a finalist's re-measurement exists (on its way back from the
evaluator, or as its round's row is appended) is deferred until the row is stored, then still
ends the run, as in the search (test_interrupt_result_kept_s45c); the measurement itself stays
interruptible. In child processes: signals reach the main thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from unit.test_interrupt_not_lost import run_child

FINALISTS = """\
from dataclasses import replace
from optimizer.config import SearchConfig
from optimizer.interrupts import interruptible
from optimizer.search.finalists import _round_store, remeasure
from optimizer.store import TrialStore
from unit.test_finalists import measured

path, where = sys.argv[1], sys.argv[2]

def interrupt():
    os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns

plain_append = TrialStore.append

def append(self, result):
    if where == 'append':
        interrupt()  # as the round's append starts: before, it raised here and the row was lost
    plain_append(self, result)

TrialStore.append = append

class Evaluator:
    workload_cfg = type('W', (), {'slo': __import__('unit.test_finalists').test_finalists.SLO})()

    def __init__(self, store):
        self.store = store

    def evaluate(self, candidate, role='candidate', stop_below=None):
        with interruptible():  # as Evaluator.evaluate: the measurement itself
            if where == 'measuring':
                interrupt()
                print('not interrupted', flush=True)
        result = replace(measured(candidate.batch_size, [1.0 * candidate.batch_size] * 2), role=role)
        if where == 'return':
            interrupt()  # the result made, on its way back to the round
        return result

pool = [measured(b, [float(b)]) for b in (16, 8)]
store = TrialStore(path, 'ctx')
try:
    with sigterm_interrupts():
        remeasure(Evaluator(store), pool, SearchConfig(finalists=2, finalist_rounds=2))
    print('finished', flush=True)
except KeyboardInterrupt:
    print('interrupted', flush=True)
first = _round_store(TrialStore(path, 'ctx'), pool, 0)  # as a resumed run reads it
print('stored', *[r.candidate.batch_size for r in pool if first.get(r.candidate) is not None], flush=True)
"""


@pytest.mark.parametrize("where", ["return", "append"])
def test_a_finalists_result_made_before_an_interrupt_is_stored_and_the_run_still_ends(
    tmp_path: Path, where: str
) -> None:
    child = run_child(FINALISTS, str(tmp_path / "t.db"), where)
    assert child.stdout.splitlines() == ["interrupted", "stored 16"], child.stderr
    assert child.returncode == 0, child.stderr


def test_a_finalists_measurement_itself_stays_interruptible(tmp_path: Path) -> None:
    child = run_child(FINALISTS, str(tmp_path / "t.db"), "measuring")
    assert child.stdout.splitlines() == ["interrupted", "stored"], child.stderr
