"""A pace of inf reaches the slot loop's wait only through space.extra (the axis refuses it); a
fractional SLURM memory is rounded up, never down."""

from __future__ import annotations

import math

import pytest

from optimizer.backends.torch.settings import TorchSettings
from optimizer.config.launcher import SlurmConfig
from optimizer.search.launchers import _slurm_parameters


@pytest.mark.parametrize("pace", [math.inf, -1.0, math.nan])
def test_a_pace_that_is_not_a_finite_wait_is_refused(pace: float) -> None:
    with pytest.raises(ValueError, match="step_interval_ms"):
        TorchSettings(precision="fp32", kv_cache="static", loop="slots", step_interval_ms=pace)


@pytest.mark.parametrize(
    ("mem_gb", "mem"), [(64, "64GB"), (64.0, "64GB"), (7.5, "7680MB"), (1.0001, "1025MB")]
)
def test_slurm_memory_is_never_less_than_asked(mem_gb: float, mem: str) -> None:
    assert _slurm_parameters(SlurmConfig(mem_gb=mem_gb), 1)["mem"] == mem
