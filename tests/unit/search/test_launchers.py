"""The launchers' handling of a coordinator that stops early, against fake submitit and Ray
modules: nothing is submitted and no Ray instance starts."""

from __future__ import annotations

import signal
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from optimizer.config import RayConfig, SlurmConfig
from optimizer.search import launchers


class FakeJob:
    def __init__(self, index: int, cancelled: list[tuple[int, bool]]) -> None:
        self.job_id = f"42_{index}"
        self.index = index
        self._cancelled = cancelled

    def result(self) -> Any:
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, as interrupts.py turns it) while waiting

    def cancel(self, check: bool = True) -> None:
        self._cancelled.append((self.index, check))


@pytest.fixture
def cancelled_jobs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """A fake submitit: the jobs it submits are waited on when interrupted; records cancels."""
    cancelled: list[tuple[int, bool]] = []

    class Executor:
        def __init__(self, **_kwargs: object) -> None:
            pass

        def update_parameters(self, **_kwargs: object) -> None:
            pass

        def map_array(self, _fn: object, specs: list[object]) -> list[FakeJob]:
            return [FakeJob(index, cancelled) for index, _ in enumerate(specs)]

    fake = types.ModuleType("submitit")
    fake.AutoExecutor = Executor  # type: ignore[attr-defined]
    fake.SlurmExecutor = Executor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "submitit", fake)
    return cancelled


@pytest.mark.parametrize("cluster", ["slurm", "local"])
def test_an_interrupted_coordinator_cancels_its_slurm_jobs(
    cancelled_jobs: list[tuple[int, bool]], cluster: str
) -> None:
    """Submitted jobs outlive the coordinator: left running they measure on and keep their
    leases, so a resumed run finds its candidates held. Each is cancelled, ended or not."""
    with pytest.raises(KeyboardInterrupt):
        launchers.on_slurm(SlurmConfig(cluster=cluster), [object(), object()])  # type: ignore[list-item]
    assert cancelled_jobs == [(0, False), (1, False)]


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fake ray: `init` installs its own SIGTERM handler as Ray's does; waiting is interrupted."""
    fake = types.ModuleType("ray")
    state: dict[str, Any] = {"initialized": False, "cancelled": []}

    def init(**_options: object) -> None:
        state["initialized"] = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def get(_ref: object) -> Any:
        raise KeyboardInterrupt

    def remote(**_options: object) -> Any:
        return lambda fn: types.SimpleNamespace(remote=lambda spec: ("ref", spec))

    fake.init = init  # type: ignore[attr-defined]
    fake.shutdown = lambda: state.update(initialized=False)  # type: ignore[attr-defined]
    fake.is_initialized = lambda: state["initialized"]  # type: ignore[attr-defined]
    fake.remote = remote  # type: ignore[attr-defined]
    fake.get = get  # type: ignore[attr-defined]
    fake.cancel = state["cancelled"].append  # type: ignore[attr-defined]
    fake.state = state  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # restored after: ray_instance sets them
    monkeypatch.setenv("RAY_worker_niceness", "0")
    return fake


@pytest.fixture
def own_sigterm() -> Iterator[Any]:
    """A SIGTERM handler of the test's own (as interrupts.sigterm_interrupts installs one)."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_interrupted_coordinator_cancels_its_ray_tasks(fake_ray: types.ModuleType) -> None:
    with pytest.raises(KeyboardInterrupt):
        launchers.on_ray(RayConfig(), ["a", "b"], gpu=False)  # type: ignore[list-item]
    assert fake_ray.state["cancelled"] == [("ref", "a"), ("ref", "b")]
    assert not fake_ray.state["initialized"]  # the instance started here is stopped all the same


def test_starting_ray_keeps_the_sigterm_handler(fake_ray: types.ModuleType, own_sigterm: Any) -> None:
    """Ray's handler would end the coordinator without the KeyboardInterrupt that stops its
    workers and ends the run as interrupted."""
    with launchers.ray_instance(RayConfig(), workers=1):
        assert fake_ray.state["initialized"]
        assert signal.getsignal(signal.SIGTERM) is own_sigterm
