"""A warning for CPU workers sharing the nodes of an existing Ray cluster.

Each worker's layout candidate (replicas x tensor-parallel ranks) reserves a placement group of
every core of the target. A Ray instance started here reserves that for every worker
(launchers.ray_instance); a cluster's nodes have the CPUs their operator gave them, so two
workers on one node wait for each other's layouts until the placement timeout fails them.
"""

from __future__ import annotations

import logging
import math

from optimizer.config import RunConfig
from optimizer.search.workers import most_processes
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)


def warn_of_shared_ray_nodes(cfg: RunConfig, target: TargetSpec) -> None:
    """Warn (once: at launch) where CPU workers on an existing Ray cluster may block each other's
    layouts; nothing where one worker runs, the space has no layout, or a GPU is the target."""
    ray, workers = cfg.launcher.ray, cfg.search.workers
    processes = most_processes(cfg.space)
    if cfg.launcher.kind != "ray" or ray.address is None or target.is_cuda or workers < 2 or processes < 2:
        return
    cpus = workers * target.cores + math.ceil(workers * ray.cpus_per_worker)
    log.warning(
        "%d CPU workers on the Ray cluster at %s, and the space has layouts of up to %d processes "
        "(space.replicas x space.tensor_parallel, space.extra): each worker's layout candidate needs a "
        "placement group of every core (%d), so workers that share a node wait for each other's "
        "layouts until the placement timeout fails them. Use search.workers=1, or give each node "
        "%d x the cores plus launcher.ray.cpus_per_worker per worker (ray start --num-cpus=%d)",
        workers,
        ray.address,
        processes,
        target.cores,
        workers,
        cpus,
    )
