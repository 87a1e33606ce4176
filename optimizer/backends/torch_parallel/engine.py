"""The parent's side of a layout: start the ranks, drive them in lockstep, merge their answers,
and take every rank down together when one fails or the engine closes."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp

from optimizer.backends.torch.compiling import place_inductor_cache
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_parallel import RANKS_ENV
from optimizer.backends.torch_parallel.layout import (
    START_TIMEOUT_SECONDS,
    LayoutEngine,
    RankFailed,
    RankTraceback,
    free_port,
    port_taken,
)
from optimizer.backends.torch_parallel.ranks import GroupPlan, rank_main
from optimizer.measure.cpu_time import track_processes, untrack_processes
from optimizer.model import ModelSpec
from optimizer.target import TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
CLOSE_SECONDS = 10.0
PORT_TRIES = 3  # starts of a layout whose rendezvous port another process took (free_port)


def build_parallel_engine(
    model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
) -> LayoutEngine:
    """The candidate's ranks as processes of this one, or as Ray actors in a placement group when
    this process is a Ray worker (`WATTSMITH_RANKS=ray`, see ray_ranks.py)."""
    settings = candidate.settings
    assert isinstance(settings, TorchSettings)
    if settings.compile:  # the ranks inherit the variable
        place_inductor_cache(workdir / "inductor")
    plans = group_plans(model, candidate, target, timeout_seconds=START_TIMEOUT_SECONDS)
    for _ in range(PORT_TRIES - 1):
        try:
            return _start_engine(plans, target.is_cuda)
        except RankFailed as failure:  # its ranks are ended already
            if not port_taken(failure):
                raise
            log.warning("starting the ranks again on new ports: %s", failure)
        plans = [replace(plan, port=free_port()) for plan in plans]
    return _start_engine(plans, target.is_cuda)


def _start_engine(plans: list[GroupPlan], gpu: bool) -> LayoutEngine:
    if os.environ.get(RANKS_ENV) == "ray":
        from optimizer.backends.torch_parallel.ray_ranks import RayLayoutEngine

        return RayLayoutEngine(plans, gpu=gpu)
    return ParallelEngine(plans)


def group_plans(
    model: ModelSpec, candidate: Candidate, target: TargetSpec, timeout_seconds: float
) -> list[GroupPlan]:
    """One plan per replica: consecutive cores (CPU) or GPUs from the target's first, per rank.
    Workers on one host (local processes or Ray tasks) plan the same cores: a candidate is measured
    on the same cores whichever worker measures it, and their windows take turns (device_lock.py);
    only their builds and quality probes may overlap there."""
    degree, threads, settings = candidate.tensor_parallel, candidate.threads, candidate.settings
    assert isinstance(settings, TorchSettings)
    allowed = sorted(os.sched_getaffinity(0))
    plans = []
    for replica in range(candidate.replicas):
        ranks = range(replica * degree, (replica + 1) * degree)
        if target.is_cuda:
            cores: tuple[tuple[int, ...], ...] = ()
            devices = tuple(target.gpu_indices(candidate.processes)[k] for k in ranks)
        else:
            # more ranks than cores (never by the rules; an experiment may) share them round-robin
            cores = tuple(_cores(allowed, k, threads) for k in ranks) if threads else ()
            devices = ()
        plans.append(
            GroupPlan(
                replica,
                degree,
                free_port(),
                threads,
                cores,
                devices,
                model,
                settings,
                timeout_seconds,
            )
        )
    return plans


def _cores(allowed: list[int], process: int, threads: int) -> tuple[int, ...]:
    return tuple(allowed[(process * threads + i) % len(allowed)] for i in range(threads))


class ParallelEngine(LayoutEngine):
    """The ranks as processes spawned here (torch.multiprocessing), pinned to their cores or GPUs."""

    def __init__(self, plans: list[GroupPlan]) -> None:
        self.plans = plans
        self._mp = mp.get_context("spawn")
        self.results: Any = self._mp.Queue()
        self.queues: list[Any] = [self.results]  # closed with the engine
        self.commands: list[list[Any]] = []
        self.contexts: list[Any] = []
        self.pids: list[int] = []
        self.pci_bus_ids: list[str] = []
        self._ended = threading.Event()  # lets the thread that forked the ranks end
        self._finalizer = weakref.finalize(self, _end, self.contexts, self.pids, self.queues, self._ended)
        try:
            spawn = functools.partial(
                _spawn, self._mp, plans, self.commands, self.contexts, self.pids, self.queues, self.results
            )
            _fork_on_held_thread(spawn, self._ended)
            track_processes(self.pids)
            ready = self._collect("ready", sum(p.degree for p in plans), START_TIMEOUT_SECONDS)
            self.pci_bus_ids = [info["pci_bus_id"] for info in ready if info["pci_bus_id"]]
        except BaseException:
            self.abort()
            raise

    @property
    def processes(self) -> list[Any]:
        return [p for context in self.contexts for p in context.processes]

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        if not self.contexts:
            raise RankFailed("the engine is closed")
        for replica, call in enumerate(calls):
            for commands in self.commands[replica]:
                commands.put(call)
        return self._collect("ok", len(calls), None)

    def _collect(self, kind: str, count: int, timeout: float | None) -> list[Any]:
        """The payloads of `count` messages of `kind`, in (replica, rank) order; a rank's error or
        death ends every rank and raises RankFailed naming it. A collective that hangs is bounded
        by the process group's timeout (the rank then raises)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        got: dict[tuple[int, int], Any] = {}
        while len(got) < count:
            try:
                status, replica, rank, payload = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._check_alive()
                if deadline is not None and time.perf_counter() > deadline:
                    self.abort()
                    raise RankFailed(f"ranks not {kind} after {timeout:.0f} s") from None
                continue
            if status == "error":
                # a rank that died makes its peers fail in their collectives: name it first
                time.sleep(POLL_SECONDS)
                reporter = f"replica {replica} rank {rank} "
                dead = [line for line in self._dead_ranks() if not line.startswith(reporter)]
                self.abort()
                last = payload.strip().splitlines()[-1] if payload.strip() else "?"
                reason = "; ".join([*dead, f"replica {replica} rank {rank} failed: {last}"])
                raise RankFailed(reason) from RankTraceback(payload)
            if status == kind:
                got[(replica, rank)] = payload
        return [got[key] for key in sorted(got)]

    def _check_alive(self) -> None:
        dead = self._dead_ranks()
        if dead:
            self.abort()
            raise RankFailed("; ".join(dead))

    def _dead_ranks(self) -> list[str]:
        """A line per rank that has exited, e.g. `replica 0 rank 1 exited with code -9 (signal 9)`."""
        dead = []
        for replica, context in enumerate(self.contexts):
            for rank, process in enumerate(context.processes):
                if not process.is_alive():
                    code = process.exitcode
                    signal = f" (signal {-code})" if code is not None and code < 0 else ""
                    dead.append(f"replica {replica} rank {rank} exited with code {code}{signal}")
        return dead

    def abort(self) -> None:
        """A rank failed: the others may wait in a collective for it; kill them all at once."""
        self._finalizer()
        self.contexts.clear()
        self.commands.clear()

    def close(self) -> None:
        """Ask every rank to stop, then end whichever has not within a few seconds."""
        for commands in self.commands:
            for q in commands:
                with contextlib.suppress(OSError, ValueError):  # a queue already closed
                    q.put(("close", ()))
        deadline = time.perf_counter() + CLOSE_SECONDS
        for process in self.processes:
            process.join(max(deadline - time.perf_counter(), 0.0))
        self.abort()


def _spawn(
    context: Any,
    plans: list[GroupPlan],
    commands: list[list[Any]],
    contexts: list[Any],
    pids: list[int],
    queues: list[Any],
    results: Any,
) -> None:
    """Start every group's ranks, each with a command queue of its own."""
    for plan in plans:
        group = [context.Queue() for _ in range(plan.degree)]
        queues.extend(group)
        commands.append(group)
        started = mp.start_processes(
            rank_main, args=(plan, group, results), nprocs=plan.degree, join=False, start_method="spawn"
        )
        contexts.append(started)
        pids.extend(p.pid for p in started.processes)


def _fork_on_held_thread(spawn: Callable[[], None], ended: threading.Event) -> None:
    """Run `spawn` on a thread that then lives until `ended`. A rank's parent-death signal
    (ranks.py, and torch's own) comes when the *thread* that forked it ends, not its process:
    ranks forked on the caller's thread were killed as soon as it ended (an engine built in a
    loader thread, as load_recipe may be called, failed its first generate: `exited with code -9`).
    `spawn` must not hold the engine: this thread would keep it from being collected."""
    failure: list[BaseException] = []
    forked = threading.Event()

    def hold() -> None:
        try:
            spawn()
        except BaseException as error:  # noqa: BLE001 - raised again on the caller's thread
            failure.append(error)
        forked.set()
        ended.wait()

    threading.Thread(target=hold, name="wattsmith-rank-parent", daemon=True).start()
    forked.wait()
    if failure:
        raise failure.pop()


def _end(contexts: list[Any], pids: list[int], queues: list[Any], ended: threading.Event) -> None:
    """Kill and reap every rank still alive, remove its ranks' torch error files, close the
    queues, let the thread that forked the ranks end (the engine's finalizer, at close or exit)."""
    for context in contexts:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(CLOSE_SECONDS)
        # a rank that raised pickled its traceback there for torch's join(), which this engine
        # never calls (the results queue brought it): left in TMPDIR at every failed candidate
        for path in context.error_files:
            with contextlib.suppress(OSError):
                os.unlink(path)
    ended.set()
    for q in queues:
        q.cancel_join_thread()  # a dead reader must not block this process's exit
        q.close()
    untrack_processes(pids)
