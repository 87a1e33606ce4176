"""Layout engines: ranks forked for an engine built on a thread that then ends keep serving, and a
batch split between replicas keeps its ranks' step stamps (a served stream's token times)."""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.queued import step_times
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_parallel import engine as engine_module
from optimizer.backends.torch_parallel.engine import ParallelEngine
from optimizer.backends.torch_parallel.layout import LayoutEngine
from optimizer.backends.torch_parallel.ranks import GroupPlan


class _EchoEngine:
    """Stands for a rank's TorchEngine: each row's first prompt token, `max_new_tokens` times."""

    device = torch.device("cpu")

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        start = time.perf_counter()
        stamps = tuple(time.perf_counter() for _ in range(max_new_tokens))
        tokens = prompt_ids[:, :1].repeat(1, max_new_tokens)
        return Generation(prompt_ids.shape[0], max_new_tokens, stamps[0] - start, stamps[-1] - start, tokens)


def _echo_rank(local_rank: int, plan: GroupPlan, commands: list[Any], results: Any) -> None:
    """The real rank entry point (parent-death signal included), in the spawned rank, without
    loading a model."""
    from optimizer.backends.torch_parallel import ranks

    ranks.start_rank = lambda rank, group: _EchoEngine()
    ranks.rank_main(local_rank, plan, commands, results)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_outlive_the_thread_that_built_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "rank_main", _echo_rank)
    plans = [GroupPlan(r, 1, 0, 0, (), (), None, TorchSettings(), 60.0) for r in range(2)]  # type: ignore[arg-type]
    built: list[ParallelEngine] = []
    loader = threading.Thread(target=lambda: built.append(ParallelEngine(plans)))
    loader.start()
    loader.join()
    engine = built[0]
    pids = list(engine.pids)
    try:
        # the kernel sends a rank's parent-death signal when the thread that forked it ends
        assert not wait([p.sentinel for p in engine.processes], timeout=1.0), (
            "a rank died with the loader thread"
        )
        generation = engine.generate(torch.tensor([[7, 1], [8, 1], [9, 1]]), 3)  # 2 + 1 rows
        assert generation.token_ids is not None and generation.token_ids.tolist() == [
            [7] * 3,
            [8] * 3,
            [9] * 3,
        ]
        assert generation.batch_size == 3
    finally:
        engine.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    deadline = time.monotonic() + 5
    while (
        any(t.name == "wattsmith-rank-parent" for t in threading.enumerate()) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not any(t.name == "wattsmith-rank-parent" for t in threading.enumerate())


class _Replicas(LayoutEngine):
    """Replicas whose answers are given: only the merge runs."""

    def __init__(self, parts: list[Generation]) -> None:
        self.plans = [None] * len(parts)  # type: ignore[list-item]
        self.parts = parts

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        return self.parts[: len(calls)]


def _part(rows: int, ttft: float, stamps: tuple[float, ...] | None) -> Generation:
    tokens = torch.zeros(rows, 3, dtype=torch.long)
    return Generation(rows, 3, ttft, 3.0, tokens, token_times=stamps)


def test_replicas_keep_their_step_stamps_slowest_first() -> None:
    engine = _Replicas([_part(2, 0.2, (10.2, 10.4, 10.9)), _part(1, 0.3, (10.3, 10.35, 11.0))])
    generation = engine.generate(torch.zeros(3, 4, dtype=torch.long), 3)
    assert generation.token_times == (10.3, 10.4, 11.0)
    # a served stream's tokens are the stamped ones, not spread from the start and the TTFT
    assert step_times(generation, start=10.0) == (10.3, 10.4, 11.0)
    # a replica that stamps nothing (loop=graph): none are merged
    unstamped = _Replicas([_part(2, 0.2, (10.2, 10.4, 10.9)), _part(1, 0.3, None)])
    assert unstamped.generate(torch.zeros(3, 4, dtype=torch.long), 3).token_times is None
