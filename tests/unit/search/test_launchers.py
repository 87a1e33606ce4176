"""The launchers' handling of a coordinator that stops early, against fake submitit and Ray
modules: nothing is submitted and no Ray instance starts."""

from __future__ import annotations

import pickle
import signal
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

import pytest

from optimizer.config import RayConfig, SlurmConfig
from optimizer.errors import UserError
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

        def map_array(self, _fn: object, *iterables: list[object]) -> list[FakeJob]:
            return [FakeJob(index, cancelled) for index, _ in enumerate(iterables[-1])]

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
        return lambda fn: types.SimpleNamespace(remote=lambda *args: ("ref", args[-1]))

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


def _across_processes(value: Any) -> Any:
    """What reaches the coordinator from another process: a pickled copy."""
    return pickle.loads(pickle.dumps(value))


def refuse(spec: str) -> Any:
    raise UserError("target", f"worker {spec} measures in another context", "use the same versions")


@pytest.fixture
def finished_slurm_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake submitit whose jobs run at once; a job's exception comes back as its traceback's
    text in a FailedJobError, as submitit's does."""

    class Job:
        def __init__(self, index: int, fn: Any, args: tuple[Any, ...]) -> None:
            self.job_id, self._fn, self._args = f"42_{index}", fn, args

        def result(self) -> Any:
            try:
                return _across_processes(self._fn(*self._args))
            except Exception:
                raise RuntimeError(
                    f"Job failed during processing with trace:\n{traceback.format_exc()}"
                ) from None

        def cancel(self, check: bool = True) -> None:
            pass

    class Executor:
        def __init__(self, **_kwargs: object) -> None:
            pass

        def update_parameters(self, **_kwargs: object) -> None:
            pass

        def map_array(self, fn: Any, *iterables: list[Any]) -> list[Job]:
            return [Job(index, fn, args) for index, args in enumerate(zip(*iterables, strict=True))]

    fake = types.ModuleType("submitit")
    fake.AutoExecutor = Executor  # type: ignore[attr-defined]
    fake.SlurmExecutor = Executor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "submitit", fake)


@pytest.fixture
def running_ray(fake_ray: types.ModuleType) -> None:
    """The fake ray's tasks run when waited on; what they return or raise comes back pickled."""

    def remote(**_options: object) -> Any:
        return lambda fn: types.SimpleNamespace(remote=lambda *args: (fn, args))

    def get(ref: Any) -> Any:
        fn, args = ref
        try:
            outcome = fn(*args)
        except Exception as error:  # noqa: BLE001 - raised again in the "driver"
            raise _across_processes(error) from None
        return _across_processes(outcome)

    fake_ray.remote = remote  # type: ignore[attr-defined]
    fake_ray.get = get  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["slurm", "ray"])
def test_bad_input_found_by_ray_or_slurm_workers_is_a_user_error_of_the_coordinator(
    finished_slurm_jobs: None,
    running_ray: None,
    engine: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's one message and exit 2, as for a local worker's, not a traceback and exit 1."""
    monkeypatch.setattr(launchers, "run_worker", refuse)
    with pytest.raises(UserError) as info:
        if engine == "slurm":
            launchers.on_slurm(SlurmConfig(), ["0", "1"])  # type: ignore[list-item]
        else:
            launchers.on_ray(RayConfig(), ["0", "1"], gpu=False)  # type: ignore[list-item]
    error = info.value
    assert (error.field, error.problem, error.fix) == (
        "target",
        "worker 0 measures in another context",
        "use the same versions",
    )
    assert "worker 1 failed: UserError: target: worker 1 measures in another context" in caplog.text


@pytest.mark.parametrize("engine", ["slurm", "ray"])
def test_ray_and_slurm_workers_reports_reach_the_coordinator(
    finished_slurm_jobs: None, running_ray: None, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launchers, "run_worker", str.upper)
    if engine == "slurm":
        assert launchers.on_slurm(SlurmConfig(), ["a"]) == ["A"]  # type: ignore[list-item]
    else:
        assert launchers.on_ray(RayConfig(), ["a"], gpu=False) == ["A"]  # type: ignore[list-item]


def test_a_user_error_survives_pickling() -> None:
    """Ray sends a worker's exception back pickled: it must arrive with its field and fix."""
    error = pickle.loads(
        pickle.dumps(UserError("target", "measures in another context", "give every worker one GPU"))
    )
    assert (error.field, error.problem, error.fix) == (
        "target",
        "measures in another context",
        "give every worker one GPU",
    )
