"""Layouts' leftovers: workers of one local Ray instance may each hold a layout of every core at
once (as local workers share the CPU), and a layout request's TPOT runs to the call's return (the
results' trip back), as a one-process engine's runs to its own."""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.torch_parallel import layout as layout_module
from optimizer.backends.torch_parallel.layout import LayoutEngine
from optimizer.config import RayConfig
from optimizer.search import launchers


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_each_local_ray_worker_can_hold_a_layout_of_every_core(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Before: the instance had the cores once (plus the workers' own reservations), so a second
    worker's layout of every core waited for placement while the first one's ranks lived: and the
    first, to measure, waited for the second's build to leave the device lock (shared while it
    builds), until the placement timeout (300 s) failed the second's candidate."""
    started: dict[str, Any] = {}
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: False  # type: ignore[attr-defined]
    fake.init = lambda **options: started.update(options)  # type: ignore[attr-defined]
    fake.shutdown = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_worker_niceness", "0")
    monkeypatch.setattr(launchers, "usable_cores", lambda: 8)
    with launchers.ray_instance(RayConfig(cpus_per_worker=0.5), workers=workers):
        pass
    own = -(-workers // 2)  # each worker's 0.5 CPU, rounded up
    assert started["num_cpus"] == max(workers, 1) * 8 + own


class _KnownClock(LayoutEngine):
    """One replica whose part is given, called at 10.0 and returning at `end` (this host's clock)."""

    def __init__(self, part: Generation, end: float) -> None:
        self.plans = [None]  # type: ignore[list-item]
        self.part = part
        self.end = end

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        return [self.part]


def _generate(monkeypatch: pytest.MonkeyPatch, part: Generation, end: float) -> Generation:
    clock = iter([10.0, end])
    monkeypatch.setattr(layout_module.time, "perf_counter", lambda: next(clock))
    return _KnownClock(part, end).generate(torch.zeros(2, 4, dtype=torch.long), part.new_tokens)


def _flat(generation: Generation) -> list[float]:
    return [seconds for latency in generation.latencies() for seconds in latency]


def test_a_layout_requests_tpot_counts_the_results_trip_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rank began at 10.05 (its first step stamped 10.15, 0.1 s into it: a 0.05 s trip out)
    and returned 0.3 s in, at 10.35; the call returned at 10.5. Before: each request's TPOT was
    the rank's (0.3 - 0.1) / 2 = 0.1 s, leaving out the 0.15 s the results took to come back."""
    tokens = torch.zeros(2, 3, dtype=torch.long)
    part = Generation(2, 3, 0.1, 0.3, tokens, token_times=(10.15, 10.2, 10.25))
    generation = _generate(monkeypatch, part, end=10.5)
    assert _flat(generation) == pytest.approx([0.15, 0.175] * 2)  # (10.5 - 10.15) / 2
    # the last token's time is the call's return, as for the batch's own TPOT
    ttft, tpot = generation.latencies()[0]
    assert ttft + 2 * tpot == pytest.approx(generation.total_seconds)
    assert generation.tpot_seconds == pytest.approx(tpot)


def test_an_unstamped_part_keeps_its_own_tpot(monkeypatch: pytest.MonkeyPatch) -> None:
    """loop=graph stamps no steps: neither trip is known apart from the other, as for TTFT."""
    part = Generation(2, 3, 0.1, 0.3, torch.zeros(2, 3, dtype=torch.long))
    assert _flat(_generate(monkeypatch, part, end=10.5)) == pytest.approx([0.1, 0.1] * 2)


PORT_TAKEN = (
    "replica 0 rank 0 failed: torch.distributed.DistNetworkError: The server socket has failed to "
    "listen on any local network address. port: 45963, useIpv6: false, code: -98, name: EADDRINUSE, "
    "message: address already in use"
)  # what a rank whose rendezvous port another process took in the meantime fails with (measured)


def _starts(monkeypatch: pytest.MonkeyPatch, failures: list[str]) -> list[list[int]]:
    """The ports of each start of a 2-replica CPU layout whose first starts fail with `failures`."""
    from dataclasses import replace

    from optimizer.backends.torch_parallel import engine as engine_module
    from optimizer.backends.torch_parallel.layout import RankFailed
    from unit.factories import target_spec, torch_candidate

    ports: list[list[int]] = []

    def start(plans: list[Any]) -> str:
        ports.append([plan.port for plan in plans])
        if len(ports) <= len(failures):
            raise RankFailed(failures[len(ports) - 1])
        return "engine"

    monkeypatch.setattr(engine_module, "ParallelEngine", start)
    monkeypatch.setattr(engine_module, "free_port", itertools.count(50000).__next__)
    candidate = replace(torch_candidate(batch_size=2, threads=1), replicas=2)
    built = engine_module.build_parallel_engine(None, candidate, target_spec(cores=8), None)  # type: ignore[arg-type]
    assert built == "engine"
    return ports


def test_ranks_whose_rendezvous_port_was_taken_start_again_on_new_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """free_port() releases its port before rank 0 binds it (seconds later, once torch is
    imported): another process may take it. Before: the candidate failed with EADDRINUSE."""
    ports = _starts(monkeypatch, [PORT_TAKEN])
    assert ports == [[50000, 50001], [50002, 50003]]


def test_a_port_taken_every_time_or_another_failure_fails_the_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from optimizer.backends.torch_parallel.engine import PORT_TRIES
    from optimizer.backends.torch_parallel.layout import RankFailed

    with pytest.raises(RankFailed, match="EADDRINUSE"):
        _starts(monkeypatch, [PORT_TAKEN] * PORT_TRIES)
    with pytest.raises(RankFailed, match="out of memory"):
        _starts(monkeypatch, ["replica 0 rank 1 failed: RuntimeError: out of memory", PORT_TAKEN])
