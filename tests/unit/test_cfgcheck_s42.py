"""Config values that passed validation and failed only after the model loaded, or changed a
request without a word: an infinite slots step interval or KV-offload size, and a SLURM memory
request below 1 GB (sbatch gets whole GB: 0.5 became --mem=0GB, SLURM's "all of the node's
memory", 0 was dropped, a negative one reached sbatch)."""

from __future__ import annotations

import pytest

from optimizer.config import compose_run_config
from optimizer.errors import UserError

SLURM = ["launcher=slurm", "store_path=postgresql://user@db/wattsmith"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("space.torch.step_intervals_ms=[0,inf]", "space.torch.step_intervals_ms"),
        ("space.torch_cb.kv_offload_gib=[inf]", "space.torch_cb.kv_offload_gib"),
        ("space.torch_cb.kv_offload_gib=[1e400]", "space.torch_cb.kv_offload_gib"),
    ],
)
def test_infinite_space_values_refused(override: str, field: str) -> None:
    with pytest.raises(UserError) as caught:
        compose_run_config([override])
    assert caught.value.field == field
    assert "finite" in caught.value.fix


@pytest.mark.parametrize("mem", ["0.5", "0", "-1"])
def test_slurm_memory_below_one_gb_refused(mem: str) -> None:
    with pytest.raises(UserError) as caught:
        compose_run_config([*SLURM, f"launcher.slurm.mem_gb={mem}"])
    assert caught.value.field == "launcher.slurm.mem_gb"
    assert "null" in caught.value.fix


@pytest.mark.parametrize("mem", ["null", "1", "64"])
def test_slurm_memory_accepted(mem: str) -> None:
    run = compose_run_config([*SLURM, f"launcher.slurm.mem_gb={mem}"])
    assert run.launcher.slurm.mem_gb == (None if mem == "null" else float(mem))


def test_finite_space_values_accepted() -> None:
    run = compose_run_config(["space.torch.step_intervals_ms=[0,20]", "space.torch_cb.kv_offload_gib=[0,8]"])
    assert run.space.torch.step_intervals_ms == [0.0, 20.0]
    assert run.space.torch_cb.kv_offload_gib == [0.0, 8.0]
