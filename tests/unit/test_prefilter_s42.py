"""The memory prefilter and the search plan: the baseline is never pruned, and the reason of a
candidate too big for the memory budget names a tensor-parallel degree only where the rules let
that candidate shard."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer.config import WorkloadConfig, compose_run_config
from optimizer.search import plan
from optimizer.search.prefilter import memory_fit_reason
from optimizer.space import exclusion_reason
from optimizer.target import GIB, TargetSpec
from unit.factories import SMOLLM2_SHAPE, target_spec, torch_candidate

# fp32 and bf16 at batch 1: SmolLM2 in fp32 (~1.0 GiB with the runtime's overhead) is over a
# 1 GiB budget's 0.9 usable, bf16 (~0.8 GiB) is not
SPACE = [
    "workload=batch",
    "space.backends=[torch]",
    "space.extra=[]",
    "space.torch.precisions=[fp32,bf16]",
    "space.torch.quantizations=[none]",
    "space.torch.kv_caches=[dynamic]",
    "space.batch_sizes=[1]",
    "space.threads=[4]",
]


def planned(folder: Path, target: TargetSpec) -> Any:
    """What plan_search reads of a MeasurementSetup, SmolLM2's shape."""
    return SimpleNamespace(
        model=SimpleNamespace(
            path=folder,
            trust_remote_code=False,
            weight_sha256="ab" * 32,
            shape=SMOLLM2_SHAPE,
            format="hf-dir",
        ),
        target=target,
        text_sha256="cd" * 32,
        quality_tokens=torch.tensor([[1, 2, 3]]),
        workload=SimpleNamespace(prompts=torch.arange(64).reshape(16, 4)),
        meter=SimpleNamespace(source="estimate"),
        stream=None,
        streams=None,
    )


def test_a_baseline_over_the_memory_budget_is_measured_not_pruned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The search measures the baseline whatever the budget (the ratios need it): listed as pruned
    too, it was in the results twice (pruned and measured) and counted as pruned in the report."""
    setup = planned(tmp_path, target_spec(memory_bytes=GIB))
    with caplog.at_level("WARNING", logger="optimizer.search.plan"):
        searched = plan.plan_search(compose_run_config(SPACE), setup)
    assert searched.baseline.label() == "torch fp32 kv=dynamic b1 t4"
    assert searched.baseline not in [c for c, _ in searched.pruned]
    # over the budget it is no choice to deploy: measured for the ratios only
    assert searched.baseline not in searched.candidates
    assert [c.label() for c in searched.candidates] == ["torch bf16 kv=dynamic b1 t4"]
    assert "measured for the ratios only" in caplog.text and "space.baseline" in caplog.text


def test_with_nothing_fitting_the_baseline_still_says_why(tmp_path: Path) -> None:
    """No search runs then: the pruned (the baseline among them) name the budget in the error."""
    setup = planned(tmp_path, target_spec(memory_bytes=GIB // 2))
    searched = plan.plan_search(compose_run_config(SPACE), setup)
    assert searched.candidates == []
    assert searched.baseline in [c for c, _ in searched.pruned]


# a 100B-class shape whose heads 2 and 4 divide
BIG = replace(
    SMOLLM2_SHAPE,
    num_parameters=100 * 10**9,
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=128256,
)


@pytest.mark.parametrize(
    "settings",
    [
        {"precision": "bf16", "kv_cache": "static", "compile": True},
        {"precision": "bf16", "kv_cache": "static", "loop": "slots"},
        {"precision": "fp32", "quantization": "int8-weight"},
    ],
)
def test_no_degree_is_suggested_that_the_rules_exclude(settings: dict[str, Any]) -> None:
    """Tensor parallelism shards unquantized, uncompiled HF generate only: suggesting
    tensor_parallel=2 for another candidate leads to one excluded by the rules."""
    gpus = target_spec(kind="cuda", device_count=4)
    work = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)
    candidate = torch_candidate(batch_size=1, threads=0, **settings)
    assert exclusion_reason(replace(candidate, tensor_parallel=2), gpus, False, BIG) is not None
    reason = memory_fit_reason(candidate, BIG, gpus, work)
    assert reason is not None and reason.startswith("needs ~")
    assert "tensor_parallel" not in reason
    plain = torch_candidate(batch_size=1, threads=0, precision="bf16")
    assert str(memory_fit_reason(plain, BIG, gpus, work)).endswith("; tensor_parallel=4 would fit it")
