"""`search.workers` workers: each runs the same loop (runner.search_worker) against one TrialStore.

Nothing here hands out candidates: the store's leases do, so a worker may start late, die, or run
on another node. What the launcher provides is a process and a device: on a GPU target one whole
GPU per worker (CUDA_VISIBLE_DEVICES, Ray `num_gpus=1`, SLURM `gpus_per_node`); on a CPU target
the host's CPU, shared, whose energy windows the device lock (search/device_lock.py) serializes.

A worker rebuilds the search plan itself and refuses to run when its context (model weights,
target fingerprint, measurement protocol) differs from the coordinator's: its results would land
where the coordinator never looks.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from optimizer.backends.torch_parallel import RANKS_ENV
from optimizer.config import RunConfig, SpaceConfig
from optimizer.errors import UserError
from optimizer.logs import setup_logging
from optimizer.measure.energy import measure_idle_watts
from optimizer.measure.nvml_device import cuda_visible_devices
from optimizer.search.device_lock import DeviceLock
from optimizer.search.evaluate import Evaluator
from optimizer.search.plan import plan_search, prepare_run_measurement
from optimizer.search.roofline import Roofline, RooflineRates
from optimizer.search.runner import WorkerReport, search_worker
from optimizer.space import LAYOUT_FIELDS
from optimizer.store import TrialStore
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable for a process, a Ray task or a SLURM job."""

    cfg: RunConfig
    index: int
    context: str
    run_id: str
    deadline_epoch: float  # wall clock (time.time()), shared by every worker of the search
    rates: RooflineRates | None
    coordinator_host: str
    idle_watts: float  # the coordinator's reading: reused by workers on its host's CPU
    visible_device: str | None = None  # CUDA_VISIBLE_DEVICES for one of several local GPU workers


def check_workers(cfg: RunConfig, target: TargetSpec) -> None:
    """Refuse a worker layout that cannot work or cannot measure honestly, naming the field."""
    # (a store other nodes cannot reach is refused when the config is composed: RunConfig)
    if cfg.launcher.kind == "local" and target.is_cuda:
        first = _first_gpu(target)
        available = max(len(visible_gpus()) - first, 0)
        if cfg.search.workers > available:
            since = f" from target.device_index={first} on" if first else ""
            lower = ", a lower target.device_index" if first else ""
            raise UserError(
                "search.workers",
                f"{cfg.search.workers} workers but {available} GPU(s) here{since}: a trial needs a whole GPU",
                f"use search.workers<={available}{lower}, or launcher=ray / launcher=slurm for more GPUs",
            )
        processes = most_processes(cfg.space)
        if cfg.search.workers > 1 and processes > 1:
            # each local worker is shown its own GPU only (CUDA_VISIBLE_DEVICES): no layout fits
            raise UserError(
                "search.workers",
                f"is {cfg.search.workers}, and each local worker sees one GPU, but the space asks for "
                f"layouts of up to {processes} processes (space.replicas x space.tensor_parallel, space.extra)",
                "use search.workers=1 (one worker sees every GPU) for multi-GPU layouts, "
                "or launcher=ray, which gives a layout's ranks GPUs of their own",
            )
    if not target.is_cuda and cfg.search.workers > 1:
        log.warning(
            "%d workers on one CPU: their builds and quality probes overlap, their energy windows take turns",
            cfg.search.workers,
        )


def most_processes(space: SpaceConfig) -> int:
    """The most processes (GPUs) a candidate of the space asks for: its axes' or an extra's layout."""
    counts = [r * d for r, d in itertools.product(space.replicas, space.tensor_parallel)]
    for extra in space.extra:
        layout = (extra.get(name, 1) for name in LAYOUT_FIELDS)
        # a count that is not a positive integer is the space's to refuse, naming it
        counts.append(math.prod(n if type(n) is int and n > 0 else 1 for n in layout))
    return max(counts, default=1)


def visible_gpus() -> list[str]:
    """Physical GPU ids this process may use (CUDA_VISIBLE_DEVICES, else every GPU torch sees)."""
    listed = cuda_visible_devices()
    if listed:
        return listed
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_gpus(cfg: RunConfig, target: TargetSpec) -> list[str | None]:
    """One GPU per local worker, from the target's device index on."""
    gpus = visible_gpus()
    first = _first_gpu(target)
    return [gpus[first + i] for i in range(cfg.search.workers)]  # as many: check_workers


def _first_gpu(target: TargetSpec) -> int:
    """target.device_index: the user keeps the GPUs below it for other work."""
    return target.gpu.index if target.gpu is not None else 0


def warn_if_deprioritized(index: int) -> None:
    """Say so when this worker runs at a lowered CPU priority (Ray's workers: nice 15 unless the
    cluster sets RAY_worker_niceness): beside other load its candidates are measured starved."""
    niceness = os.nice(0)  # reads, changes nothing
    if niceness > 0:
        log.warning(
            "worker %d runs at nice %d: on a busy node its candidates get less CPU than the work "
            "beside them, and measure slower and costlier than they are (Ray starts its workers at "
            "nice 15: start the cluster with RAY_worker_niceness=0, as a local launcher=ray instance is)",
            index,
            niceness,
        )


def ray_node_gpus() -> int:
    """GPUs of the Ray node this task runs on."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return next(int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["NodeID"] == here)


def run_worker(spec: WorkerSpec) -> WorkerReport:
    """The entry point of every worker process, Ray task and SLURM job."""
    if spec.visible_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.visible_device  # before anything touches CUDA
    setup_logging(prefix=f"w{spec.index} ")
    warn_if_deprioritized(spec.index)
    cfg = spec.cfg
    cache_dir = Path(cfg.cache_dir).expanduser()
    setup = prepare_run_measurement(cfg, cache_dir)
    if os.environ.get(RANKS_ENV) == "ray" and setup.target.is_cuda:
        # Ray shows this task its own GPU only; a layout's ranks get theirs from a placement group
        setup.target = replace(setup.target, device_count=max(ray_node_gpus() - 1, 1))
    plan = plan_search(cfg, setup)
    host = socket.gethostname()
    if plan.context != spec.context:
        raise UserError(
            "target",
            f"worker {spec.index} on {host} measures in another context ({plan.context} != {spec.context}): "
            "its model, target fingerprint or software differ from the coordinator's",
            "give every worker the same GPU model, driver and package versions",
        )
    # the quality context hashes a part of what the context does: equal contexts, equal quality contexts
    store = TrialStore(cfg.store_path, plan.context, run_id=spec.run_id, quality_context=plan.quality_context)
    device = DeviceLock.for_target(setup.target)
    if host == spec.coordinator_host and not setup.target.is_cuda:
        setup.meter.idle_watts = spec.idle_watts  # the same CPU the coordinator measured idle
    else:
        with device.exclusive():
            measure_idle_watts(setup.meter, cfg.workload.idle_seconds, cfg.workload.disturbed_retries)
    log.info(
        "worker %d on %s, store %s, idle %.1f W", spec.index, host, store.describe(), setup.meter.idle_watts
    )
    evaluator = Evaluator.for_setup(setup, cfg.search, store, device)
    roofline = (
        Roofline(setup.model.shape, cfg.workload, spec.rates, setup.target.is_cuda)
        if spec.rates is not None
        else None
    )
    return search_worker(
        plan.candidates,
        plan.baseline,
        evaluator,
        cfg.search,
        cfg.quality,
        log.info,
        roofline,
        deadline=spec.deadline_epoch,
        clock=time.time,
        first_worker=spec.index == 0,  # says what is said once per search
    )
