"""A layout's ranks are pinned to their cores as Ray actors too, as local ranks are: a candidate
measured either way is one store key, and its record says its cores were pinned. Cores a rank
may not use fail its candidate with the reason, rather than measure it unpinned."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from optimizer.backends.torch_parallel.engine import group_plans
from optimizer.backends.torch_parallel.ranks import GroupPlan
from unit.factories import target_spec, torch_candidate

BEYOND = 4095  # a core id no test machine lets a process use


def cpu_plans(replicas: int = 2) -> list[GroupPlan]:
    candidate = replace(torch_candidate(batch_size=2, threads=1), replicas=replicas)
    return group_plans(None, candidate, target_spec(cores=8), timeout_seconds=60)  # type: ignore[arg-type]


def run_child(body: str) -> subprocess.CompletedProcess[str]:
    """`body` in a fresh process: pinning changes the affinity of the whole process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True, timeout=60
    )


def test_the_ray_ranks_are_given_their_cores() -> None:
    from optimizer.backends.torch_parallel.ray_ranks import ray_plan

    for plan in cpu_plans():
        started = ray_plan(plan, gpu=False)
        assert started.cores == plan.cores and all(started.cores)
        assert (started.devices, started.assigned_gpu) == ((), False)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_rank_pins_every_thread_of_its_process() -> None:
    child = run_child(
        """
        import os, threading
        from optimizer.backends.torch_parallel.ranks import pin_process

        core = min(os.sched_getaffinity(0))
        done = threading.Event()
        threading.Thread(target=done.wait).start()  # as a Ray actor's threads, there before
        pin_process((core,))
        pinned = {os.sched_getaffinity(int(t)) == {core} for t in os.listdir("/proc/self/task")}
        done.set()
        print(pinned == {True})
        """
    )
    assert child.stdout.strip() == "True", child.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_cores_a_rank_may_not_use_fail_it_with_the_reason() -> None:
    child = run_child(
        f"""
        import os
        from optimizer.backends.torch.settings import TorchSettings
        from optimizer.backends.torch_parallel.ranks import GroupPlan, start_rank

        allowed = os.sched_getaffinity(0)
        cores = ((min(allowed), {BEYOND}),)  # the model: never reached
        plan = GroupPlan(0, 1, 0, 1, cores, (), None, TorchSettings(), 60)
        try:
            start_rank(0, plan)
        except RuntimeError as error:
            print(error)
        print(os.sched_getaffinity(0) == allowed)
        """
    )
    reason, unchanged = child.stdout.strip().splitlines()[-2:]
    first = min(os.sched_getaffinity(0))
    assert reason.startswith(f"cannot pin this rank to cores [{first}, {BEYOND}]: this process may use only")
    assert unchanged == "True"  # not pinned to the part it may use


def test_a_ray_rank_that_cannot_be_pinned_fails_its_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="ray is in the `cluster` extra")
    from optimizer.backends.torch_parallel.layout import RankFailed
    from optimizer.backends.torch_parallel.ray_ranks import RayLayoutEngine
    from optimizer.config import RayConfig
    from optimizer.search.launchers import ray_instance

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_worker_niceness", "0")
    plan = replace(cpu_plans(replicas=1)[0], cores=((BEYOND,),))  # the model: never reached
    with ray_instance(RayConfig(), workers=0), pytest.raises(RankFailed) as failed:
        RayLayoutEngine([plan], gpu=False, placement_timeout=60)
    reason = str(failed.value)
    assert reason.startswith(
        f"replica 0 rank 0 failed: RuntimeError: cannot pin this rank to cores [{BEYOND}]"
    )
