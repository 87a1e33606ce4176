"""An engine is closed while its worker still holds the device: a multi-process engine's ranks
exit before another worker's energy windows start (they may overlap a build, never a window)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from optimizer.results import MEASURED, REJECTED

from .test_evaluate import log, make_evaluator  # noqa: F401 - fixtures


class RecordingLock:
    def __init__(self, events: list) -> None:
        self.events = events

    @contextmanager
    def _held(self, mode: str) -> Iterator[None]:
        self.events.append((f"{mode} lock", ""))
        yield
        self.events.append((f"{mode} unlock", ""))

    def shared(self) -> Iterator[None]:
        return self._held("shared")  # type: ignore[return-value]

    def exclusive(self) -> Iterator[None]:
        return self._held("exclusive")  # type: ignore[return-value]


def _lock_around(events: list, close: tuple[str, str]) -> str:
    """The lock mode held when `close` happened ('' when none)."""
    held: list[str] = []
    for event in events:
        if event == close:
            return held[-1] if held else ""
        kind = event[0]
        if kind.endswith(" lock"):
            held.append(kind.split()[0])
        elif kind.endswith(" unlock"):
            held.pop()
    raise AssertionError(f"{close} never happened: {events}")


def test_a_measured_engine_is_closed_inside_its_exclusive_block(log, make_evaluator, make_candidate) -> None:  # noqa: F811
    evaluator = make_evaluator()
    evaluator.device = RecordingLock(log)
    result = evaluator.evaluate(make_candidate(batch_size=2, precision="bf16"))
    assert result.status == MEASURED
    assert _lock_around(log, ("close", "bf16 kv=dynamic")) == "exclusive"


def test_a_rejected_engine_is_closed_holding_the_device_shared(log, make_evaluator, make_candidate) -> None:  # noqa: F811
    evaluator = make_evaluator()
    evaluator.device = RecordingLock(log)
    result = evaluator.evaluate(make_candidate(quantization="int8-dynamic"))
    assert result.status == REJECTED
    assert _lock_around(log, ("close", "fp32 int8-dynamic kv=dynamic")) == "shared"
    assert log.count(("close", "fp32 int8-dynamic kv=dynamic")) == 1
