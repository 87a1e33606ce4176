"""The store context: what must match for stored results to be reused (search/plan.py `protocol`)."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer import measure
from optimizer.config import compose_run_config
from optimizer.search import plan
from optimizer.store import context_key

TEXT = "cd" * 32


def key(*overrides: str, source: str = "estimate", text: str = TEXT) -> str:
    return context_key({"protocol": plan.protocol(compose_run_config(list(overrides)), text, source)})


def test_protocol_names_the_measurement_protocol_version(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan.protocol(compose_run_config([]), TEXT, "nvml")["protocol_version"] == measure.PROTOCOL_VERSION
    assert measure.PROTOCOL_VERSION >= 2  # serving changed what a stored figure means
    before = key()
    monkeypatch.setattr(plan, "PROTOCOL_VERSION", measure.PROTOCOL_VERSION + 1)
    assert key() != before  # a bump measures afresh


def test_quality_batch_size_and_text_key_the_results() -> None:
    assert key("quality.batch_size=2") != key("quality.batch_size=4")
    assert key(text="ef" * 32) != key()


@pytest.mark.parametrize(
    "override", ["target.cpu_active_watts_per_core=9", "target.cpu_idle_watts_per_core=0.5"]
)
def test_the_estimates_coefficients_key_estimated_results_only(override: str) -> None:
    """A resumed search never mixes estimates made with other watts per core; a meter's readings
    do not depend on them."""
    assert key(override) != key()
    assert key(override, source="nvml") == key(source="nvml")
    parts: dict[str, Any] = plan.protocol(compose_run_config([override]), TEXT, "estimate")
    assert set(parts["estimate_coefficients"]) == {"cpu_active_watts_per_core", "cpu_idle_watts_per_core"}


@pytest.mark.parametrize(
    ("override", "same_stream", "same_batch"),
    [
        ("workload.min_window_seconds=9", True, False),  # a stream's windows are its requests
        ("workload.warmup_batches=3", True, False),
        ("workload.idle_seconds=1", True, True),
        ("workload.max_new_tokens=48", False, False),  # the greedy-parity check at build reads it
        ("workload.rate=3", False, True),
        ("workload.output_lengths.max=128", False, True),
    ],
)
def test_each_kind_of_workload_is_keyed_by_the_fields_it_measures_with(
    override: str, same_stream: bool, same_batch: bool
) -> None:
    assert (key("workload=chat", override) == key("workload=chat")) is same_stream
    assert (key("workload=batch", override) == key("workload=batch")) is same_batch


def test_the_config_and_the_measured_token_ids_key_the_results(tmp_path) -> None:
    """The weights' hash misses a fixed config.json or tokenizer: both change what is measured."""
    from types import SimpleNamespace

    import torch

    (tmp_path / "config.json").write_text('{"rope_theta": 10000.0}')

    def setup(quality: list[int], prompts: list[int]) -> SimpleNamespace:
        return SimpleNamespace(
            model=SimpleNamespace(path=tmp_path),
            quality_tokens=torch.tensor([quality]),
            workload=SimpleNamespace(prompts=torch.tensor([prompts])),
        )

    before = plan.measured_inputs(setup([1, 2, 3], [1, 4]))  # type: ignore[arg-type]
    assert before == plan.measured_inputs(setup([1, 2, 3], [1, 4]))  # type: ignore[arg-type]
    assert before != plan.measured_inputs(setup([2, 3], [1, 4]))  # type: ignore[arg-type]  # e.g. no BOS now
    assert before != plan.measured_inputs(setup([1, 2, 3], [1, 5]))  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text('{"rope_theta": 100000.0}')
    assert before["config_sha256"] != plan.measured_inputs(setup([1, 2, 3], [1, 4]))["config_sha256"]  # type: ignore[arg-type]
