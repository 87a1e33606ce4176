"""Layouts whose ranks are Ray actors in one placement group (what a Ray worker builds): the same
tokens as one process, every rank's process metered, a rank that dies or raises fails the
candidate and takes the other ranks and the placement group with it, a group Ray cannot place
fails with the resources it lacked; and `optimize launcher=ray` measures a replicas candidate."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.registry import build_engine
from optimizer.backends.torch_parallel import RANKS_ENV
from optimizer.backends.torch_parallel.engine import group_plans
from optimizer.backends.torch_parallel.layout import RankFailed
from optimizer.config import ModelConfig, TargetConfig
from optimizer.measure.cpu_time import process_cpu_seconds
from optimizer.measure.energy import EstimateMeter
from optimizer.model import ModelSpec, resolve_model
from optimizer.space import Candidate, TorchSettings
from optimizer.target import TargetSpec, detect_target

ray = pytest.importorskip("ray", reason="ray is in the `cluster` extra")
from optimizer.backends.torch_parallel.ray_ranks import RayLayoutEngine  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = torch.tensor([[1, 504, 3458, 282, 4649, 314], [1, 378, 2593, 282, 260, 1345]])
NEW_TOKENS = 8
ONE = Candidate(TorchSettings(), batch_size=2, threads=1)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def on_ray(local_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANKS_ENV, "ray")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, cache_dir: Path) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), cache_dir)


@pytest.fixture(scope="module")
def cpu() -> TargetSpec:
    return detect_target(TargetConfig(kind="cpu"))


def _gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not Path(f"/proc/{pid}").exists()


def _group_state(engine: RayLayoutEngine) -> str:
    return str(ray.util.placement_group_table(engine.group)["state"])


def _decode(engine: Any) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        generation = engine.generate(PROMPTS, NEW_TOKENS)
        assert generation.token_ids is not None and generation.batch_size == PROMPTS.shape[0]
        return generation.token_ids, engine.score(PROMPTS)
    finally:
        engine.close()


def test_ray_ranks_decode_what_one_process_decodes_and_are_metered(
    tiny: ModelSpec, cpu: TargetSpec, tmp_path: Path, on_ray: None
) -> None:
    os.environ.pop(RANKS_ENV)  # the reference: one process, here
    tokens, logits = _decode(build_engine(tiny, ONE, cpu, tmp_path))
    os.environ[RANKS_ENV] = "ray"
    engine = build_engine(tiny, replace(ONE, tensor_parallel=2), cpu, tmp_path)
    assert isinstance(engine, RayLayoutEngine)
    pids = list(engine.pids)
    assert len(pids) == 2 and os.getpid() not in pids and _group_state(engine) == "CREATED"
    assert engine.bundles == [{"CPU": 1.0}, {"CPU": 1.0}]  # one bundle per rank
    meter = EstimateMeter(cpu.cores, active_watts_per_core=5.0, idle_watts_per_core=0.0)
    before = [process_cpu_seconds(pid) for pid in pids]
    with meter.window() as window:
        generation = engine.generate(PROMPTS, NEW_TOKENS)
    joules = window.joules
    ranks = [process_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    assert all(seconds > 0 for seconds in ranks)
    assert joules >= 5.0 * sum(ranks) * 0.95  # the actors' CPU time is in the window
    assert generation.token_ids is not None and torch.equal(generation.token_ids, tokens)
    sharded_tokens, sharded_logits = _decode(engine)
    assert torch.equal(sharded_tokens, tokens)
    torch.testing.assert_close(sharded_logits, logits, atol=1e-4, rtol=1e-4)
    assert all(_gone(pid) for pid in pids) and _group_state(engine) == "REMOVED"


def test_a_ray_rank_that_dies_fails_the_candidate_and_ends_the_others(
    tiny: ModelSpec, cpu: TargetSpec, tmp_path: Path, on_ray: None
) -> None:
    engine = build_engine(tiny, replace(ONE, replicas=2), cpu, tmp_path)
    assert isinstance(engine, RayLayoutEngine)
    pids = list(engine.pids)
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(RankFailed, match=r"replica 1 rank 0 died"):
        engine.generate(PROMPTS, NEW_TOKENS)
    assert all(_gone(pid) for pid in pids) and _group_state(engine) == "REMOVED"


def test_a_ray_rank_that_raises_fails_with_its_error(
    cache_dir: Path, cpu: TargetSpec, tmp_path: Path, on_ray: None
) -> None:
    """Bypassing the rule: two ranks cannot split SmolLM2's 9 heads; the rank's error is the reason."""
    smollm2 = resolve_model(ModelConfig(source="smollm2"), cache_dir)
    engine = build_engine(smollm2, replace(ONE, tensor_parallel=2), cpu, tmp_path)
    assert isinstance(engine, RayLayoutEngine)
    pids = list(engine.pids)
    with pytest.raises(RankFailed, match=r"rank [01] failed: RuntimeError: shape .* is invalid"):
        engine.generate(PROMPTS, NEW_TOKENS)
    assert all(_gone(pid) for pid in pids)


def test_a_group_ray_cannot_place_fails_with_what_it_lacked(
    tiny: ModelSpec, cpu: TargetSpec, local_ray: None
) -> None:
    plans = group_plans(tiny, replace(ONE, replicas=3, threads=2), cpu, timeout_seconds=10)
    with pytest.raises(RankFailed, match=r"no group of 3 bundles of \{'CPU': 2.0\} on one node within 2 s"):
        RayLayoutEngine(plans, gpu=False, placement_timeout=2)
    assert ray.util.placement_group_table() and all(
        group["state"] == "REMOVED" for group in ray.util.placement_group_table().values()
    )


def test_the_cli_on_ray_measures_a_replicas_candidate(cache_dir: Path, tmp_path: Path) -> None:
    from cli_support import LAYOUT_SEARCH, optimize, stored

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two replicas need two cores")
    done = optimize(
        *LAYOUT_SEARCH,
        "space.replicas=[2]",
        "launcher=ray",
        f"output_dir={tmp_path / 'run'}",
        f"store_path={tmp_path / 't.db'}",
        cache=cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [r["result"] for r in stored(tmp_path / "t.db")]
    replicas = [r for r in results if r["candidate"].get("replicas") == 2]
    assert len(replicas) == 1 and replicas[0]["status"] == "measured", json.dumps(replicas)[:2000]
    assert replicas[0]["performance"]["windows"][0]["output_tokens"] > 0
    assert "2 Ray actors in placement group" in done.stdout + done.stderr
