"""Layouts on the CPU, on real processes: tensor-parallel ranks over gloo (transformers' TP plan)
decode what one process decodes; replicas split a batch and every rank's CPU time is counted; a
rank that dies fails the candidate and no rank outlives it or its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from optimizer.backends.registry import build_engine
from optimizer.backends.torch_parallel.engine import ParallelEngine, RankFailed
from optimizer.config import ModelConfig, TargetConfig, WorkloadConfig
from optimizer.measure.cpu_time import process_cpu_seconds
from optimizer.measure.energy import EstimateMeter
from optimizer.measure.workload import Workload, measure_performance
from optimizer.model import ModelSpec, resolve_model
from optimizer.space import Candidate, TorchSettings, exclusion_reason
from optimizer.target import TargetSpec, detect_target

pytestmark = pytest.mark.slow

# "The capital of France is" and a second prompt of the same length, SmolLM2's tokenizer, with BOS
PROMPTS = torch.tensor([[1, 504, 3458, 282, 4649, 314], [1, 378, 2593, 282, 260, 1345]])
NEW_TOKENS = 10
ONE = Candidate(TorchSettings(), batch_size=2, threads=1)


@pytest.fixture(scope="module")
def smollm2(cache_dir: Path) -> ModelSpec:
    return resolve_model(ModelConfig(source="smollm2"), cache_dir)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, cache_dir: Path) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), cache_dir)


@pytest.fixture(scope="module")
def cpu() -> TargetSpec:
    return detect_target(TargetConfig(kind="cpu"))


def _greedy(
    model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    engine = build_engine(model, candidate, target, workdir)
    try:
        generation = engine.generate(PROMPTS, NEW_TOKENS)
        assert generation.token_ids is not None and generation.batch_size == PROMPTS.shape[0]
        return generation.token_ids, engine.score(PROMPTS)
    finally:
        engine.close()


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()  # reaped too: a zombie still has its /proc entry


def test_two_gloo_ranks_decode_what_one_rank_decodes(
    tiny: ModelSpec, cpu: TargetSpec, tmp_path: Path
) -> None:
    assert tiny.shape.num_attention_heads % 2 == 0 and tiny.shape.num_kv_heads % 2 == 0
    tokens, logits = _greedy(tiny, ONE, cpu, tmp_path)
    sharded_tokens, sharded_logits = _greedy(tiny, replace(ONE, tensor_parallel=2), cpu, tmp_path)
    assert torch.equal(sharded_tokens, tokens)
    torch.testing.assert_close(sharded_logits, logits, atol=1e-4, rtol=1e-4)


def test_smollm2_shards_over_three_ranks_not_two(smollm2: ModelSpec, cpu: TargetSpec, tmp_path: Path) -> None:
    """SmolLM2-135M has 9 attention and 3 key-value heads: degree 2 cannot split them (the rule
    says so before anything is built); degree 3 decodes exactly what one process does."""
    assert exclusion_reason(replace(ONE, tensor_parallel=2), cpu, shape=smollm2.shape) == (
        "2 does not divide the model's 9 attention heads"
    )
    tokens, logits = _greedy(smollm2, ONE, cpu, tmp_path)
    sharded_tokens, sharded_logits = _greedy(smollm2, replace(ONE, tensor_parallel=3), cpu, tmp_path)
    assert torch.equal(sharded_tokens, tokens)
    torch.testing.assert_close(sharded_logits, logits, atol=1e-3, rtol=1e-3)


def test_replicas_split_the_batch_and_count_every_process(
    smollm2: ModelSpec, cpu: TargetSpec, tmp_path: Path
) -> None:
    if cpu.cores < 2:
        pytest.skip("two replicas pinned to a core each need two cores")
    tokens, _ = _greedy(smollm2, ONE, cpu, tmp_path)
    engine = build_engine(smollm2, replace(ONE, replicas=2), cpu, tmp_path)
    assert isinstance(engine, ParallelEngine)
    try:
        pids = engine.pids
        assert [sorted(os.sched_getaffinity(pid)) for pid in pids] == [
            [c] for c in sorted(os.sched_getaffinity(0))[:2]
        ]
        generation = engine.generate(PROMPTS, NEW_TOKENS)
        assert generation.token_ids is not None and torch.equal(generation.token_ids, tokens)
        assert generation.batch_size == 2 and len(generation.latencies()) == 2
        # energy (the estimate) and throughput over both processes
        meter = EstimateMeter(cpu.cores, active_watts_per_core=5.0, idle_watts_per_core=0.0)
        before = [process_cpu_seconds(pid) for pid in pids]
        cfg = WorkloadConfig(
            prompt_tokens=6, max_new_tokens=NEW_TOKENS, min_window_seconds=1.0, repeats=1, warmup_batches=0
        )
        result = measure_performance(engine, Workload(PROMPTS, NEW_TOKENS), 2, meter, cfg)
        ranks = [process_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        assert all(seconds > 0.1 for seconds in ranks)  # both replicas worked
        window = result.windows[0]
        assert window.joules >= 5.0 * sum(ranks) * 0.95  # every rank's CPU time is in the window
        assert window.output_tokens % (2 * NEW_TOKENS) == 0 and window.output_tokens > 0
    finally:
        engine.close()
    assert all(_gone(pid) for pid in pids)


def test_a_rank_that_dies_fails_the_candidate_and_ends_the_others(
    tiny: ModelSpec, cpu: TargetSpec, tmp_path: Path
) -> None:
    engine = build_engine(tiny, replace(ONE, tensor_parallel=2), cpu, tmp_path)
    assert isinstance(engine, ParallelEngine)
    pids = engine.pids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(RankFailed, match=r"replica 0 rank 1 exited with code -9 \(signal 9\)"):
        engine.generate(PROMPTS, NEW_TOKENS)
    assert all(_gone(pid) for pid in pids)  # rank 0, waiting in a collective, was ended too


def test_a_rank_that_raises_fails_with_its_error(smollm2: ModelSpec, cpu: TargetSpec, tmp_path: Path) -> None:
    """Bypassing the rule: two ranks cannot split 9 heads; the rank's own error is the reason."""
    engine = build_engine(smollm2, replace(ONE, tensor_parallel=2), cpu, tmp_path)
    assert isinstance(engine, ParallelEngine)
    pids = engine.pids
    with pytest.raises(RankFailed, match=r"rank [01] failed: RuntimeError: shape .* is invalid"):
        engine.generate(PROMPTS, NEW_TOKENS)
    assert all(_gone(pid) for pid in pids)


PARENT = """
import sys, time
from pathlib import Path
from optimizer.backends.registry import build_engine
from optimizer.config import ModelConfig, TargetConfig
from optimizer.model import resolve_model
from optimizer.space import Candidate, TorchSettings
from optimizer.target import detect_target

if __name__ == "__main__":
    model = resolve_model(ModelConfig(source=sys.argv[1]), Path(sys.argv[2]))
    candidate = Candidate(TorchSettings(), batch_size=2, threads=1, tensor_parallel=2)
    engine = build_engine(model, candidate, detect_target(TargetConfig(kind="cpu")), Path(sys.argv[2]))
    print(" ".join(map(str, engine.pids)), flush=True)
    time.sleep(600)
"""


def test_ranks_do_not_outlive_a_killed_parent(tiny: ModelSpec, cache_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tiny.path), str(cache_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) or _zombie(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) or _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    """Dead, waiting for init to reap it (its parent was killed first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_cli_searches_replicas_and_refuses_a_degree_the_heads_forbid(
    cache_dir: Path, tmp_path: Path
) -> None:
    from cli_support import LAYOUT_SEARCH, optimize, stored

    if os.cpu_count() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two replicas need two cores")
    run = tmp_path / "run"
    done = optimize(
        *LAYOUT_SEARCH,
        "space.replicas=[1,2]",
        f"output_dir={run}",
        f"store_path={tmp_path / 't.db'}",
        cache=cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {
        json.dumps(r["result"]["candidate"], sort_keys=True): r["result"] for r in stored(tmp_path / "t.db")
    }
    replicas = [r for r in results.values() if r["candidate"].get("replicas") == 2]
    assert len(replicas) == 1 and replicas[0]["status"] == "measured", replicas
    assert replicas[0]["performance"]["windows"][0]["output_tokens"] > 0
    assert "r2" in (run / "report.md").read_text()
    refused = optimize(
        *LAYOUT_SEARCH, "space.tensor_parallel=[2]", f"output_dir={tmp_path / 'no'}", cache=cache_dir
    )
    assert refused.returncode == 2
    assert "space.tensor_parallel: 2 does not divide the model's 9 attention heads" in refused.stderr


@pytest.mark.parametrize("layout", [{"replicas": 2}, {"tensor_parallel": 2}])
def test_mixed_length_prompts_are_served_like_one_process(
    tiny: ModelSpec, cpu: TargetSpec, tmp_path: Path, layout: dict[str, int]
) -> None:
    """Serving pads a queue's batch of mixed-length prompts (`generate_padded`): a layout splits
    or shards it and answers each request what one process answers."""
    prompts = [[1, 504, 3458], [1, 378, 2593, 282, 260, 1345], [1, 42], [1, 7, 8, 9, 10]]
    answers = []
    for candidate in (ONE, replace(ONE, batch_size=4, **layout)):
        engine = build_engine(tiny, candidate, cpu, tmp_path)
        try:
            generation = engine.generate_padded(prompts, 6)  # type: ignore[attr-defined]
            assert generation.batch_size == 4 and len(generation.latencies()) == 4
            answers.append(generation.token_ids)
        finally:
            engine.close()
    assert torch.equal(answers[0], answers[1])


def test_a_dead_rank_is_a_failed_result_of_the_search(
    tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.config import QualityConfig
    from optimizer.measure.setup import prepare_measurement
    from optimizer.results import FAILED
    from optimizer.search import evaluate
    from optimizer.search.evaluate import Evaluator

    setup = prepare_measurement(
        ModelConfig(source=str(tiny_model_dir)),
        TargetConfig(kind="cpu"),
        WorkloadConfig(prompt_tokens=8, max_new_tokens=4, min_window_seconds=0.2, repeats=1),
        QualityConfig(num_sequences=2, seq_tokens=32),
        cache_dir,
        4,
    )
    pids: list[int] = []

    def build_then_kill_a_rank(
        model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
    ) -> object:
        engine = build_engine(model, candidate, target, workdir)
        if isinstance(engine, ParallelEngine):
            pids.extend(engine.pids)
            os.kill(engine.pids[1], signal.SIGKILL)
        return engine

    monkeypatch.setattr(evaluate, "build_engine", build_then_kill_a_rank)
    result = Evaluator.for_setup(setup).evaluate(replace(ONE, tensor_parallel=2))
    assert result.status == FAILED
    assert result.reason is not None and "RankFailed: replica 0 rank 1 exited with code -9" in result.reason
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
