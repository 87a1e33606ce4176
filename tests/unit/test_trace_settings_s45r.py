"""A trace beside settings it cannot honour: refused when the config is composed, not after the
model is resolved and tokenized."""

from __future__ import annotations

import pytest

from optimizer.config import WorkloadConfig
from optimizer.errors import UserError


def test_a_load_curve_beside_a_trace_is_refused_with_the_config() -> None:
    """`workload.trace=... workload.rates=[1,2]` passed --show-config and was refused only by
    measure/setup.py's _streams, after the model was resolved (downloaded, converted) and its
    tokenizer and the quality text loaded."""
    with pytest.raises(UserError) as error:
        WorkloadConfig(kind="serving", trace="requests.jsonl", rates=[1.0, 2.0])
    assert error.value.field == "workload.rates" and "own arrival times" in error.value.problem
    assert WorkloadConfig(kind="serving", trace="requests.jsonl").rates == []
    assert WorkloadConfig(kind="serving", rates=[1.0, 2.0]).rates == [1.0, 2.0]
