"""Layout axes: a value is refused only when it cannot run by itself (a combination of values that
run alone is excluded with its reason), a model transformers cannot shard refuses tensor
parallelism up front, and local GPU workers (one GPU each) refuse multi-GPU layouts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from optimizer.config import SpaceConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.model import ModelShape, read_shape
from optimizer.search import workers
from optimizer.search.workers import check_workers
from optimizer.space import enumerate_candidates, exclusion_reason
from unit.factories import target_spec, torch_candidate

EVEN = ModelShape(24, 1024, 16, 8, 64, 32000, 1_000_000_000)  # 16 / 8 heads: any small degree
UNPLANNED = replace(EVEN, tensor_parallel_plan=False)  # e.g. OPT: no base_model_tp_plan
TEXT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10}


def test_values_that_run_alone_stay_and_their_combination_is_excluded() -> None:
    space = SpaceConfig(batch_sizes=[4], threads=[1], replicas=[1, 2], tensor_parallel=[1, 2])
    valid, excluded = enumerate_candidates(space, target_spec(cores=2), shape=EVEN)
    assert {(c.replicas, c.tensor_parallel) for c in valid} == {(1, 1), (2, 1), (1, 2)}
    both = {reason for c, reason in excluded if (c.replicas, c.tensor_parallel) == (2, 2)}
    assert both == {"2 x 2 = 4 processes > 2 cores"}
    gpus = target_spec(kind="cuda", device_count=2)
    valid, excluded = enumerate_candidates(replace(space, threads=[0]), gpus, shape=EVEN)
    assert {(c.replicas, c.tensor_parallel) for c in valid} == {(1, 1), (2, 1), (1, 2)}
    both = {reason for c, reason in excluded if (c.replicas, c.tensor_parallel) == (2, 2)}
    assert both == {"2 x 2 = 4 GPUs > 2 from target.device_index"}
    # a value that cannot run even beside 1 is still one error naming its axis
    with pytest.raises(UserError, match=r"space.tensor_parallel: 1 x 4 = 4 processes > 2 cores"):
        enumerate_candidates(replace(space, tensor_parallel=[1, 4]), target_spec(cores=2), shape=EVEN)


def test_a_model_without_a_tensor_parallel_plan_refuses_a_degree() -> None:
    with pytest.raises(UserError) as refused:
        enumerate_candidates(SpaceConfig(tensor_parallel=[1, 2]), target_spec(cores=4), shape=UNPLANNED)
    assert refused.value.field == "space.tensor_parallel"
    assert "needs a tensor-parallel plan" in refused.value.problem
    extra = {"batch_size": 4, "tensor_parallel": 2}
    with pytest.raises(UserError, match=r"space.extra\[0\].tensor_parallel: 2 needs a tensor"):
        enumerate_candidates(SpaceConfig(extra=[extra]), target_spec(cores=4), shape=UNPLANNED)
    sharded = replace(torch_candidate(batch_size=4, threads=1), tensor_parallel=2)
    assert "needs a tensor-parallel plan" in str(
        exclusion_reason(sharded, target_spec(cores=4), shape=UNPLANNED)
    )
    assert exclusion_reason(sharded, target_spec(cores=4), shape=EVEN) is None
    # replicas need no plan
    valid, _ = enumerate_candidates(SpaceConfig(replicas=[1, 2], threads=[1]), target_spec(), shape=UNPLANNED)
    assert {c.replicas for c in valid} == {1, 2}


@pytest.mark.parametrize(
    ("config", "planned"),
    [
        ({"model_type": "llama"}, True),
        ({"model_type": "qwen2"}, True),
        ({"model_type": "opt"}, False),
        ({"model_type": "falcon"}, False),
        ({"model_type": "bloom"}, False),
        ({"model_type": "stablelm"}, False),
        ({"model_type": "opt", "base_model_tp_plan": {"layers.*.fc1": "colwise"}}, True),  # the config's own
        ({"model_type": "opt", "auto_map": {"AutoModelForCausalLM": "m.M"}}, True),  # remote code decides
        ({"model_type": "not-in-transformers"}, True),
        ({}, True),  # no model_type: unknown, not refused
    ],
)
def test_read_shape_records_whether_transformers_can_shard_the_model(
    tmp_path: Path, config: dict[str, Any], planned: bool
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TEXT | config))
    assert read_shape(tmp_path).tensor_parallel_plan is planned


def test_a_composite_config_is_planned_by_its_text_config(tmp_path: Path) -> None:
    text = TEXT | {"model_type": "qwen2"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "opt", "text_config": text}))
    assert read_shape(tmp_path).tensor_parallel_plan is True


@pytest.mark.parametrize(
    "override",
    [
        "space.tensor_parallel=[1,2]",
        "space.replicas=[1,2]",
        "space.extra=[{batch_size: 4, tensor_parallel: 2}]",
    ],
)
def test_local_gpu_workers_refuse_a_multi_gpu_layout(monkeypatch: pytest.MonkeyPatch, override: str) -> None:
    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1", "2", "3"])
    host = target_spec(kind="cuda", device_count=4)
    with pytest.raises(UserError) as refused:
        check_workers(compose_run_config(["search.workers=2", override]), host)
    assert refused.value.field == "search.workers"
    assert "each local worker sees one GPU" in refused.value.problem
    assert refused.value.fix.startswith("use search.workers=1")
    # one worker sees every GPU; Ray gives a layout's ranks their own
    check_workers(compose_run_config(["search.workers=1", override]), host)
    check_workers(compose_run_config(["search.workers=2", "launcher=ray", override]), host)
    check_workers(compose_run_config(["search.workers=2", "space.extra=[]"]), host)
