"""A uniform length draws from min..max alone: the mean it does not use refuses nothing."""

from __future__ import annotations

import pytest

from optimizer.config import LengthConfig
from optimizer.errors import UserError


def test_a_uniform_length_outside_the_default_mean_is_accepted() -> None:
    LengthConfig(kind="uniform", min=10, max=100).check("workload.prompt_lengths")


@pytest.mark.parametrize("kind", ["lognormal", "fixed"])
def test_a_length_drawn_around_its_mean_still_needs_it_inside_the_bounds(kind: str) -> None:
    with pytest.raises(UserError, match=r"workload.prompt_lengths.mean"):
        LengthConfig(kind=kind, min=10, max=100).check("workload.prompt_lengths")
