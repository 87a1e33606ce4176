"""Layouts and launchers: the one local GPU worker sees every GPU (the multi-GPU layouts that
check_workers lets it run need them), a failed rank's own traceback reaches the candidate's
failure (chained, as the evaluator logs it), not only its last line, and a layout request's TTFT
counts the commands' trip to its replica."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_parallel import engine as engine_module
from optimizer.backends.torch_parallel.engine import ParallelEngine
from optimizer.backends.torch_parallel.layout import LayoutEngine, RankFailed
from optimizer.backends.torch_parallel.ranks import GroupPlan
from optimizer.config import compose_run_config
from optimizer.search import launchers, workers
from optimizer.search.workers import WorkerSpec
from unit.factories import target_spec


@pytest.mark.parametrize(("count", "shown"), [(1, [None]), (2, ["0", "1"])])
def test_one_local_gpu_worker_sees_every_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, count: int, shown: list[str | None]
) -> None:
    """Before: the only worker was shown GPU 0 alone (CUDA_VISIBLE_DEVICES=0), so it counted one
    GPU and refused the space's 2-replica layout (`space.replicas: 2 x 1 = 2 GPUs > 1`) that
    check_workers accepts for one worker ("one worker sees every GPU")."""
    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    started: list[WorkerSpec] = []
    monkeypatch.setattr(launchers, "local_processes", lambda specs: started.extend(specs) or [])
    space = "space.replicas=[1,2]" if count == 1 else "space.replicas=[1]"
    cfg = compose_run_config([f"search.workers={count}", space, f"store_path={tmp_path / 's.db'}"])
    host = target_spec(kind="cuda", device_count=2)
    launchers.launch_search(cfg, host, "context", "run", 0.0, None)
    assert [spec.visible_device for spec in started] == shown
    if count == 1:
        assert started[0].cfg == cfg  # its target is the coordinator's, device_index included


def _deep_in_the_rank() -> None:
    raise RuntimeError("boom")


class _FailingEngine:
    """Stands for a rank's TorchEngine whose generate raises from a helper."""

    device = torch.device("cpu")

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        _deep_in_the_rank()
        raise AssertionError("unreachable")


def _failing_rank(local_rank: int, plan: GroupPlan, commands: list[Any], results: Any) -> None:
    """The real rank entry point, in the spawned rank, without loading a model."""
    from optimizer.backends.torch_parallel import ranks

    ranks.start_rank = lambda rank, group: _FailingEngine()
    ranks.rank_main(local_rank, plan, commands, results)


def test_a_failed_ranks_traceback_is_chained_to_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the reason kept the rank's last line and torch's error file (the only full copy)
    was removed, so where in the rank it failed was nowhere, not even in the debug log."""
    monkeypatch.setattr(engine_module, "rank_main", _failing_rank)
    engine = ParallelEngine([GroupPlan(0, 1, 0, 0, (), (), None, TorchSettings(), 60.0)])  # type: ignore[arg-type]
    try:
        with pytest.raises(RankFailed) as failed:
            engine.generate(torch.tensor([[7, 1]]), 2)
    finally:
        engine.close()
    assert str(failed.value) == "replica 0 rank 0 failed: RuntimeError: boom"  # the reason stays short
    logged = "".join(traceback.format_exception(failed.value))  # what the evaluator logs
    assert "in _deep_in_the_rank" in logged


def test_a_failed_ray_ranks_traceback_is_chained_to_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a Ray rank: Ray's error text (the rank's traceback) was dropped (`from None`)."""
    pytest.importorskip("ray", reason="ray is in the `cluster` extra")
    from dataclasses import replace

    from optimizer.backends.torch_parallel.engine import group_plans
    from optimizer.backends.torch_parallel.ray_ranks import RayLayoutEngine
    from optimizer.config import RayConfig
    from optimizer.search.launchers import ray_instance
    from unit.factories import torch_candidate

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_worker_niceness", "0")
    candidate = torch_candidate(batch_size=1, threads=1)
    plan = replace(group_plans(None, candidate, target_spec(), 60)[0], cores=((4095,),))  # type: ignore[arg-type]
    with ray_instance(RayConfig(), workers=0), pytest.raises(RankFailed) as failed:
        RayLayoutEngine([plan], gpu=False, placement_timeout=60)
    assert str(failed.value).startswith("replica 0 rank 0 failed: RuntimeError: cannot pin this rank")
    assert "in pin_process" in "".join(traceback.format_exception(failed.value))


class _SlowDispatch(LayoutEngine):
    """Replicas reached after `trip` seconds (the commands' queue), each then generating 3 steps
    10 ms apart and stamping them on this host's clock, as the hf loop's ranks do."""

    def __init__(self, replicas: int, trip: float) -> None:
        self.plans = [None] * replicas  # type: ignore[list-item]
        self.trip = trip

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        time.sleep(self.trip)
        began = time.perf_counter()
        stamps = (began + 0.01, began + 0.02, began + 0.03)
        time.sleep(0.03)
        parts = []
        for _, (chunk, new) in calls:
            tokens = torch.zeros(len(chunk), new, dtype=torch.long)
            parts.append(Generation(len(chunk), new, 0.01, 0.03, tokens, token_times=stamps))
        return parts


def test_a_requests_ttft_counts_the_trip_to_its_replica() -> None:
    """Before: a request's TTFT began when its rank began generating, so the commands' trip to
    the ranks (1.5-10 ms on a tiny model here, measured) was left out of every layout request's
    TTFT, which a one-process engine never has: a layout's latency was measured short."""
    engine = _SlowDispatch(replicas=2, trip=0.05)
    generation = engine.generate(torch.zeros(3, 4, dtype=torch.long), 3)
    ttfts = [ttft for ttft, _ in generation.latencies()]
    assert len(ttfts) == 3 and all(0.06 - 1e-6 <= ttft < generation.total_seconds for ttft in ttfts)
    assert generation.ttft_seconds == max(ttfts)
    assert all(0.01 - 1e-9 <= tpot < 0.02 for _, tpot in generation.latencies())  # + the trip back
    # a replica that stamps nothing (loop=graph) keeps its own TTFT: the trip is not known
    unstamped = _SlowDispatch(replicas=1, trip=0.05)
    unstamped._run = lambda calls: [Generation(1, 3, 0.01, 0.03, torch.zeros(1, 3, dtype=torch.long))]  # type: ignore[method-assign]
    assert unstamped.generate(torch.zeros(1, 4, dtype=torch.long), 3).latencies()[0][0] == 0.01
