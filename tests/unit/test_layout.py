"""Layouts (replicas x tensor-parallel ranks): the candidate's keys, the rules per target and
model, explicit axes that cannot run, and the memory fit per device."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

import pytest

from optimizer.config import SpaceConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.model import ModelShape
from optimizer.search.prefilter import estimate_memory_bytes, memory_fit_reason
from optimizer.space import Candidate, TorchSettings, enumerate_candidates, exclusion_reason
from optimizer.target import GIB
from unit.factories import SMOLLM2_SHAPE, target_spec, torch_candidate

SMOLLM2 = SMOLLM2_SHAPE  # 9 attention heads, 3 key-value heads
EVEN = ModelShape(24, 1024, 16, 8, 64, 32000, 1_000_000_000)
WORKLOAD = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)


def test_one_process_keeps_the_key_and_dict_of_before() -> None:
    candidate = torch_candidate(batch_size=8, threads=2, precision="bf16")
    settings = asdict(candidate.settings)
    del settings["step_interval_ms"]  # added later still, and left out at its default likewise
    del settings["prefix_sharing"]
    del settings["compile_layers"]
    before = {"backend": "torch", "batch_size": 8, "threads": 2} | settings
    assert candidate.to_dict() == before
    assert candidate.key() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert Candidate.from_dict(before) == candidate


def test_a_layout_is_in_the_dict_key_label_and_round_trips() -> None:
    single = torch_candidate(batch_size=8, threads=1)
    replicas = replace(single, replicas=2)
    sharded = replace(single, tensor_parallel=2)
    assert replicas.to_dict()["replicas"] == 2 and "tensor_parallel" not in replicas.to_dict()
    assert len({single.key(), replicas.key(), sharded.key()}) == 3
    assert Candidate.from_dict(sharded.to_dict()) == sharded
    assert replicas.label().endswith("b8 t1 r2") and sharded.label().endswith("tp2")
    # replicas run the same numerics; a tensor-parallel degree reduces in another order
    assert replicas.numerics_key() == single.numerics_key() != sharded.numerics_key()


@pytest.mark.parametrize("value", [0, "2", 1.5])
def test_a_recipe_with_a_bad_layout_names_the_field(value: object) -> None:
    data = torch_candidate().to_dict() | {"tensor_parallel": value}
    with pytest.raises(UserError, match="settings.tensor_parallel"):
        Candidate.from_dict(data)


def test_the_space_splits_threads_among_processes() -> None:
    space = SpaceConfig(batch_sizes=[4], replicas=[1, 2], tensor_parallel=[1, 2])
    valid, excluded = enumerate_candidates(space, target_spec(cores=4), shape=EVEN)
    layouts = {(c.replicas, c.tensor_parallel, c.threads) for c in valid}
    assert layouts == {(1, 1, 4), (2, 1, 2), (1, 2, 2), (2, 2, 1)}
    assert {reason for c, reason in excluded if c.tensor_parallel > 1} <= {
        "tensor parallelism shards unquantized, uncompiled HF generate only"
    }
    assert all(c.tensor_parallel > 1 for c, _ in excluded)


def test_rules_per_target_and_model() -> None:
    cpu = target_spec(cores=2)
    one = torch_candidate(batch_size=4, threads=1)
    assert exclusion_reason(replace(one, tensor_parallel=2), cpu, shape=SMOLLM2) == (
        "2 does not divide the model's 9 attention heads"
    )
    assert "3 key-value heads" in str(
        exclusion_reason(replace(one, tensor_parallel=9), target_spec(cores=16), shape=SMOLLM2)
    )
    assert (
        exclusion_reason(replace(one, tensor_parallel=3), cpu, shape=SMOLLM2)
        == "1 x 3 = 3 processes > 2 cores"
    )
    assert "2 processes x 2 threads > 2 cores" in str(
        exclusion_reason(replace(one, replicas=2, threads=2), cpu)
    )
    assert exclusion_reason(replace(one, replicas=2), cpu) is None
    assert "fewer requests than 2 replicas" in str(
        exclusion_reason(replace(one, batch_size=1, replicas=2), cpu)
    )
    assert "unquantized" in str(
        exclusion_reason(
            replace(torch_candidate(4, 1, quantization="int8-weight"), tensor_parallel=2), cpu, shape=EVEN
        )
    )
    gpus = target_spec(kind="cuda", device_count=2)
    assert exclusion_reason(replace(one, threads=0, tensor_parallel=2), gpus, shape=EVEN) is None
    assert (
        exclusion_reason(replace(one, threads=0, replicas=3), gpus)
        == "3 x 1 = 3 GPUs > 2 from target.device_index"
    )


def test_an_explicit_axis_that_cannot_run_is_one_error_naming_it() -> None:
    with pytest.raises(UserError, match=r"space.tensor_parallel: 2 does not divide the model's 9 attention"):
        enumerate_candidates(SpaceConfig(tensor_parallel=[1, 2]), target_spec(cores=2), shape=SMOLLM2)
    with pytest.raises(UserError, match=r"space.replicas: 4 x 1 = 4 processes > 2 cores"):
        enumerate_candidates(SpaceConfig(replicas=[4]), target_spec(cores=2), shape=SMOLLM2)
    extra = {"batch_size": 4, "tensor_parallel": 2}
    with pytest.raises(UserError, match=r"space.extra\[0\].tensor_parallel"):
        enumerate_candidates(SpaceConfig(extra=[extra]), target_spec(cores=2), shape=SMOLLM2)
    with pytest.raises(UserError, match="space.replicas"):
        SpaceConfig(replicas=[0])


def test_threads_only_above_the_cores_are_one_error_some_above_are_excluded() -> None:
    with pytest.raises(UserError, match=r"space.threads: \[64\]: every value is above this CPU's 2 cores"):
        enumerate_candidates(SpaceConfig(threads=[64]), target_spec(cores=2), shape=SMOLLM2)
    valid, excluded = enumerate_candidates(SpaceConfig(threads=[2, 64]), target_spec(cores=2), shape=SMOLLM2)
    assert {c.threads for c in valid} == {2}
    assert excluded and all(reason == "threads 64 > 2 cores" for _, reason in excluded)


def test_memory_per_device_divides_sharded_weights_and_kv() -> None:
    single = Candidate(TorchSettings(), batch_size=8, threads=0)
    sharded = replace(single, tensor_parallel=2)
    embedding = EVEN.vocab_size * EVEN.hidden_size * 4
    layers = (EVEN.num_parameters * 4 - embedding) / 2
    kv = 8 * (64 + 32) * EVEN.kv_bytes_per_token(4) / 2
    assert estimate_memory_bytes(single, EVEN, WORKLOAD) - estimate_memory_bytes(sharded, EVEN, WORKLOAD) == (
        pytest.approx(layers + kv, abs=2)
    )
    # a replica holds every weight and the KV of its share of the batch
    replicas = replace(single, replicas=2)
    assert estimate_memory_bytes(replicas, EVEN, WORKLOAD) == estimate_memory_bytes(
        replace(single, batch_size=4), EVEN, WORKLOAD
    )


def test_the_slot_loops_prefix_store_doubles_the_kv_it_holds() -> None:
    slots = Candidate(TorchSettings(kv_cache="static", loop="slots"), batch_size=8, threads=0)
    sharing = replace(slots, settings=replace(slots.settings, prefix_sharing=True))
    kv = 8 * (64 + 32) * EVEN.kv_bytes_per_token(4)
    assert estimate_memory_bytes(sharing, EVEN, WORKLOAD) - estimate_memory_bytes(slots, EVEN, WORKLOAD) == (
        pytest.approx(kv, abs=2)
    )


def test_the_fit_says_when_a_degree_unlocks_the_batch() -> None:
    gpus = target_spec(kind="cuda", device_count=4, memory_bytes=4 * GIB)
    candidate = Candidate(TorchSettings(), batch_size=64, threads=0)
    reason = memory_fit_reason(candidate, EVEN, gpus, WORKLOAD)
    assert reason is not None and "per device" in reason and reason.endswith("tensor_parallel=2 would fit it")
    assert memory_fit_reason(replace(candidate, tensor_parallel=2), EVEN, gpus, WORKLOAD) is None
    # CPU processes share the host's memory: replicas multiply what is needed
    cpu = target_spec(cores=4, memory_bytes=6 * GIB)
    assert memory_fit_reason(replace(candidate, threads=1), EVEN, cpu, WORKLOAD) is None
    assert "of the memory budget" in str(
        memory_fit_reason(replace(candidate, threads=1, replicas=2), EVEN, cpu, WORKLOAD)
    )


def test_a_layout_is_recorded_with_its_gpus_or_cores() -> None:
    from optimizer.space import layout_record

    one = torch_candidate(batch_size=4, threads=1)
    assert layout_record(one, target_spec()) is None
    assert layout_record(replace(one, replicas=2), target_spec(cores=2)) == {
        "replicas": 2,
        "tensor_parallel": 1,
        "processes": 2,
        "threads_per_process": 1,
        "cores_pinned": 2,
    }
    gpus = target_spec(kind="cuda", device_count=4)
    sharded = replace(one, threads=0, replicas=2, tensor_parallel=2)
    assert layout_record(sharded, gpus) == {
        "replicas": 2,
        "tensor_parallel": 2,
        "processes": 4,
        "devices": ["cuda:0", "cuda:1", "cuda:2", "cuda:3"],
    }


def test_a_ray_placement_group_has_a_bundle_per_rank() -> None:
    from optimizer.backends.torch_parallel.engine import group_plans
    from optimizer.backends.torch_parallel.ray_ranks import rank_bundles

    candidate = replace(torch_candidate(batch_size=8, threads=2), replicas=2, tensor_parallel=2)
    plans = group_plans(None, candidate, target_spec(cores=8), timeout_seconds=10)  # type: ignore[arg-type]
    assert [plan.degree for plan in plans] == [2, 2]
    assert rank_bundles(plans, gpu=False) == [{"CPU": 2.0}] * 4
    assert rank_bundles(plans, gpu=True) == [{"CPU": 2.0, "GPU": 1.0}] * 4
