"""CPU workers on an existing Ray cluster (s45): each worker's layout candidate reserves a
placement group of every core, and the cluster's nodes have the CPUs their operator gave them
(a local instance reserves workers x cores, launchers.ray_instance). Two workers sharing a node
block each other's layouts until the placement timeout fails them: the coordinator now warns,
once, naming the cause and the fix. Against a fake `on_ray`: nothing starts."""

from __future__ import annotations

import logging

import pytest

from optimizer.config import RunConfig
from optimizer.config.launcher import LauncherConfig, RayConfig
from optimizer.config.search import SearchConfig
from optimizer.config.space import SpaceConfig
from optimizer.search import launchers, ray_cpu_sharing

from .factories import target_spec

CLUSTER = LauncherConfig(kind="ray", ray=RayConfig(address="auto"))
POSTGRES = "postgresql://user@db-host/wattsmith"


def _warnings(monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, **target_kind: str) -> list[str]:
    """The sharing warning's lines from one launch (a handler of its own: cli.main, run by other
    tests, stops the `optimizer` logger from propagating to pytest's)."""
    monkeypatch.setattr(launchers, "on_ray", lambda ray, specs, gpu: [])
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(ray_cpu_sharing.__name__)
    logger.addHandler(handler)
    try:
        launchers.launch_search(cfg, target_spec(**target_kind), "ctx", "run", 0.0, None)
    finally:
        logger.removeHandler(handler)
    return lines


def _cfg(workers: int, launcher: LauncherConfig = CLUSTER, replicas: tuple[int, ...] = (1, 2)) -> RunConfig:
    return RunConfig(
        space=SpaceConfig(replicas=list(replicas)),
        search=SearchConfig(workers=workers),
        launcher=launcher,
        store_path=POSTGRES,
    )


def test_cpu_workers_with_layouts_on_a_ray_cluster_are_warned_of_blocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [warning] = _warnings(monkeypatch, _cfg(workers=2))
    assert "placement group of every core" in warning
    assert "search.workers=1" in warning and "2 x the cores" in warning


@pytest.mark.parametrize(
    "cfg,kind",
    [
        (_cfg(workers=1), "cpu"),  # one worker: its layouts wait for nobody
        (_cfg(workers=2, replicas=(1,)), "cpu"),  # no layout in the space
        (_cfg(workers=2, launcher=LauncherConfig(kind="ray")), "cpu"),  # a local instance reserves enough
        (_cfg(workers=2), "cuda"),  # a GPU worker's layout takes GPUs, not every core
    ],
)
def test_no_warning_where_workers_cannot_block_each_other(
    monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, kind: str
) -> None:
    assert _warnings(monkeypatch, cfg, kind=kind) == []
