"""A layout's ranks as Ray actors in one placement group: one bundle per rank (the rank's threads
as CPUs, and one GPU on a GPU target), STRICT_PACK, on this worker's node.

Why one node, and this one: the ranks of a tensor-parallel group meet at rank 0's address for
their collectives, and the candidate's energy is read here (the CPU estimate from the ranks'
process CPU time, NVML from the boards the ranks report), so a rank placed on another node would
go unmetered: that fails the candidate with the reason instead. A rank that raises or dies fails
it too, the other ranks are killed at once (a peer may wait in a collective for it), and the
placement group is removed; Ray also ends the actors with the process that owns them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from dataclasses import replace
from typing import Any

from optimizer.backends.torch_parallel.layout import (
    START_TIMEOUT_SECONDS,
    LayoutEngine,
    RankFailed,
    RankTraceback,
)
from optimizer.backends.torch_parallel.ranks import GroupPlan, ready_info, start_rank
from optimizer.measure.cpu_time import track_processes, untrack_processes

log = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.2
CLOSE_SECONDS = 10.0


class RankHost:
    """One rank, in a Ray actor process of its own (Ray makes its GPU the only visible one)."""

    def __init__(self) -> None:
        self.engine: Any = None

    def node_id(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def start(self, local_rank: int, plan: GroupPlan) -> dict[str, Any]:
        self.engine = start_rank(local_rank, plan)
        return ready_info(self.engine)

    def call(self, command: str, args: tuple[Any, ...]) -> Any:
        return getattr(self.engine, command)(*args)

    def stop(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_bundles(plans: list[GroupPlan], gpu: bool) -> list[dict[str, float]]:
    """One bundle per rank, replica after replica: its threads as CPUs, one GPU on a GPU target."""
    return [
        {"CPU": float(max(plan.threads, 1)), **({"GPU": 1.0} if gpu else {})}
        for plan in plans
        for _ in range(plan.degree)
    ]


def ray_plan(plan: GroupPlan, gpu: bool) -> GroupPlan:
    """A group's plan as its Ray ranks start it. Ray gives each rank its GPU (its only visible
    device), but CPUs only as a count: the ranks pin themselves to the plan's cores, as local ranks
    do. Those cores are ids of this worker's node, and the ranks run on it (`_check_node`)."""
    return replace(plan, devices=(), assigned_gpu=gpu)


class RayLayoutEngine(LayoutEngine):
    """`replicas` groups of `degree` Ray actors, driven in lockstep from this process."""

    def __init__(
        self, plans: list[GroupPlan], gpu: bool, placement_timeout: float = PLACEMENT_TIMEOUT_SECONDS
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.plans = plans
        self.pids: list[int] = []
        self.pci_bus_ids: list[str] = []
        self.actors: list[list[Any]] = []
        self.bundles = rank_bundles(plans, gpu)
        here = str(ray.get_runtime_context().get_node_id())
        self.group = placement_group(self.bundles, strategy="STRICT_PACK", _soft_target_node_id=here)
        self._finalizer = weakref.finalize(self, _end, self.actors, [self.group], self.pids)
        try:
            self._wait_for_placement(placement_timeout)
            host = ray.remote(RankHost)
            bundle = 0
            for plan in plans:
                ranks = []
                for _ in range(plan.degree):
                    strategy = PlacementGroupSchedulingStrategy(
                        self.group, placement_group_bundle_index=bundle
                    )
                    resources = self.bundles[bundle]
                    ranks.append(
                        host.options(
                            num_cpus=resources["CPU"],
                            num_gpus=resources.get("GPU", 0.0),
                            max_restarts=0,
                            scheduling_strategy=strategy,
                        ).remote()
                    )
                    bundle += 1
                self.actors.append(ranks)
            self._check_node(here)
            started = [ray_plan(plan, gpu) for plan in plans]
            ready = self._gather(
                [
                    (replica, rank, actor.start.remote(rank, started[replica]))
                    for replica, ranks in enumerate(self.actors)
                    for rank, actor in enumerate(ranks)
                ],
                START_TIMEOUT_SECONDS,
            )
            self.pids.extend(info["pid"] for info in ready)
            track_processes(self.pids)
            self.pci_bus_ids = [info["pci_bus_id"] for info in ready if info["pci_bus_id"]]
            log.info("%d Ray actors in placement group %s", len(self.pids), self.group.id.hex()[:12])
        except BaseException:
            self.abort()
            raise

    def _wait_for_placement(self, timeout: float) -> None:
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            ray.get(self.group.ready(), timeout=timeout)
        except GetTimeoutError:
            wanted = f"{len(self.bundles)} bundles of {self.bundles[0]}"
            free = ray.available_resources()
            raise RankFailed(
                f"Ray placed no group of {wanted} on one node within {timeout:.0f} s "
                f"(free in the cluster: {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU)"
            ) from None

    def _check_node(self, here: str) -> None:
        import ray

        nodes = ray.get([actor.node_id.remote() for ranks in self.actors for actor in ranks])
        elsewhere = sorted({node for node in nodes if node != here})
        if elsewhere:
            raise RankFailed(
                f"Ray placed the ranks on node {elsewhere[0][:12]}, not on this worker's node "
                f"{here[:12]}: their energy cannot be metered here"
            )

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        if not self.actors:
            raise RankFailed("the engine is closed")
        refs = [
            (replica, rank, actor.call.remote(*call))
            for replica, call in enumerate(calls)
            for rank, actor in enumerate(self.actors[replica])
        ]
        answers = self._gather(refs, None)
        # every rank of a tensor-parallel group answers the same: rank 0's is the group's
        firsts = [index for index, (_, rank, _) in enumerate(refs) if rank == 0]
        return [answers[index] for index in firsts]

    def _gather(self, refs: list[tuple[int, int, Any]], timeout: float | None) -> list[Any]:
        """Every ref's value, in order. The first rank that raises or dies fails the candidate at
        once, naming it (its peers may wait in a collective for it until they are killed)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        named = {ref: (replica, rank) for replica, rank, ref in refs}
        pending = list(named)
        deadline = None if timeout is None else time.perf_counter() + timeout
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                replica, rank = named[ref]
                try:
                    ray.get(ref)
                except RayActorError as error:
                    self.abort()
                    reason = f"replica {replica} rank {rank} died: {_last_line(error)}"
                    raise RankFailed(reason) from RankTraceback(str(error))
                except RayTaskError as error:
                    self.abort()
                    cause = error.cause if error.cause is not None else error
                    reason = f"{type(cause).__name__}: {_last_line(cause)}"
                    failure = f"replica {replica} rank {rank} failed: {reason}"
                    raise RankFailed(failure) from RankTraceback(str(error))  # Ray's text has the rank's
            if deadline is not None and time.perf_counter() > deadline:
                self.abort()
                raise RankFailed(f"ranks not ready after {timeout:.0f} s") from None
        return list(ray.get([ref for _, _, ref in refs]))

    def abort(self) -> None:
        """Kill every rank and release the placement group."""
        self._finalizer()
        self.actors.clear()

    def close(self) -> None:
        import ray

        stops = [actor.stop.remote() for ranks in self.actors for actor in ranks]
        with contextlib.suppress(Exception):  # a rank already gone: it is killed below either way
            ray.get(stops, timeout=CLOSE_SECONDS)
        self.abort()


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _end(actors: list[list[Any]], groups: list[Any], pids: list[int]) -> None:
    """Kill every rank, remove the placement group (the engine's finalizer, at close or exit)."""
    import ray
    from ray.util.placement_group import remove_placement_group

    for ranks in actors:
        for actor in ranks:
            with contextlib.suppress(Exception):  # gone already, or Ray is shut down
                ray.kill(actor, no_restart=True)
    for group in groups:
        with contextlib.suppress(Exception):
            remove_placement_group(group)
    untrack_processes(pids)
