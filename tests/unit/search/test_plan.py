"""The store context: what must match for stored results to be reused (search/plan.py `protocol`)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer import measure
from optimizer.config import compose_run_config
from optimizer.errors import UserError
from optimizer.search import plan
from optimizer.store import context_key
from optimizer.target import GIB
from unit.factories import SMOLLM2_SHAPE, target_spec

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
        ("workload.rate=3", False, None),  # None: a stream's setting, refused on closed batches
        ("workload.output_lengths.max=128", False, None),
        ("workload.disturbed_retries=0", True, True),  # which windows are kept, not what they measure
    ],
)
def test_each_kind_of_workload_is_keyed_by_the_fields_it_measures_with(
    override: str, same_stream: bool, same_batch: bool | None
) -> None:
    assert (key("workload=chat", override) == key("workload=chat")) is same_stream
    if same_batch is None:
        with pytest.raises(UserError):
            key("workload=batch", override)
    else:
        assert (key("workload=batch", override) == key("workload=batch")) is same_batch


def test_a_trace_is_keyed_by_its_content_not_its_path() -> None:
    def trace_key(path: str, sha: str) -> str:
        cfg = compose_run_config(["workload=chat", f"workload.trace={path}"])
        return context_key({"protocol": plan.protocol(cfg, TEXT, "estimate", sha)})

    assert trace_key("/data/requests.jsonl", "ab" * 32) == trace_key("./requests.jsonl", "ab" * 32)
    assert trace_key("/data/requests.jsonl", "ab" * 32) != trace_key("/data/requests.jsonl", "cd" * 32)
    generated = plan.protocol(compose_run_config(["workload=chat"]), TEXT, "estimate", "ab" * 32)
    assert generated["workload"]["trace"] is None  # a generated stream's key is what it was


def test_a_trace_is_keyed_without_workload_rate() -> None:
    """A trace is replayed, and recorded, at its own rate: workload.rate changes nothing measured."""

    def trace_key(*overrides: str) -> str:
        cfg = compose_run_config(["workload=chat", "workload.trace=t.jsonl", *overrides])
        return context_key({"protocol": plan.protocol(cfg, TEXT, "estimate", "ab" * 32)})

    assert trace_key("workload.rate=0.5") == trace_key("workload.rate=2")


def test_the_config_and_the_measured_token_ids_key_the_results(tmp_path) -> None:
    """The weights' hash misses a fixed config.json or tokenizer: both change what is measured."""
    (tmp_path / "config.json").write_text('{"rope_theta": 10000.0}')

    def setup(quality: list[int], prompts: list[int]) -> SimpleNamespace:
        return SimpleNamespace(
            model=SimpleNamespace(path=tmp_path, trust_remote_code=False),
            quality_tokens=torch.tensor([quality]),
            workload=SimpleNamespace(prompts=torch.tensor([prompts])),
        )

    before = plan.measured_inputs(setup([1, 2, 3], [1, 4]))  # type: ignore[arg-type]
    assert before == plan.measured_inputs(setup([1, 2, 3], [1, 4]))  # type: ignore[arg-type]
    assert before != plan.measured_inputs(setup([2, 3], [1, 4]))  # type: ignore[arg-type]  # e.g. no BOS now
    assert before != plan.measured_inputs(setup([1, 2, 3], [1, 5]))  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text('{"rope_theta": 100000.0}')
    assert before["config_sha256"] != plan.measured_inputs(setup([1, 2, 3], [1, 4]))["config_sha256"]  # type: ignore[arg-type]


def fake_setup(folder, prompts: int = 16, trust_remote_code: bool = False, **model: Any) -> Any:
    """What measured_inputs and quality_context read of a MeasurementSetup."""
    return SimpleNamespace(
        model=SimpleNamespace(
            path=folder, trust_remote_code=trust_remote_code, weight_sha256=model.get("weights", "ab" * 32)
        ),
        target=model.get("target", target_spec()),
        text_sha256=TEXT,
        quality_tokens=torch.tensor([[1, 2, 3]]),
        workload=SimpleNamespace(prompts=torch.arange(prompts * 4).reshape(prompts, 4)),
    )


def planned_setup(setup: Any, model_format: str) -> Any:
    """A fake setup with what plan_search reads beside it: the meter's source, the stream, the
    model's shape (SmolLM2's) and format."""
    setup.meter, setup.stream, setup.streams = SimpleNamespace(source="estimate"), None, None
    setup.model.shape, setup.model.format = SMOLLM2_SHAPE, model_format
    return setup


def test_trusted_remote_code_keys_the_results(tmp_path) -> None:
    """With trust_remote_code the model's own modelling files run: an edit changes the numbers.
    Without it they never run, and the key is what it was (existing stores stay valid)."""
    (tmp_path / "config.json").write_text('{"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}')
    (tmp_path / "modeling_x.py").write_text("SCALE = 1.0\n")
    trusted = plan.measured_inputs(fake_setup(tmp_path, trust_remote_code=True))
    untrusted = plan.measured_inputs(fake_setup(tmp_path))
    assert set(untrusted) == {"config_sha256", "quality_tokens_sha256", "prompt_tokens_sha256"}
    (tmp_path / "modeling_x.py").write_text("SCALE = 0.5\n")
    assert plan.measured_inputs(fake_setup(tmp_path, trust_remote_code=True)) != trusted
    assert plan.measured_inputs(fake_setup(tmp_path)) == untrusted
    (tmp_path / "configuration_x.py").write_text("")  # a new file is another model's code too
    assert plan.measured_inputs(fake_setup(tmp_path, trust_remote_code=True)) != trusted


def test_a_larger_prompt_pool_is_another_key(tmp_path) -> None:
    """Batches cycle through the whole pool (max(batch sizes, 16) rows): a larger one measures other
    prompts after the first batches (and other prefix-cache hits), so it keys other results."""
    default = fake_setup(tmp_path)
    assert plan.measured_inputs(fake_setup(tmp_path, prompts=64)) != plan.measured_inputs(default)


def test_quality_rows_are_shared_by_every_measurement_of_the_same_numerics(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quality depends on the model, its quality inputs, the target and the quality protocol:
    not on the workload, the SLO, the rate, the repeats or the energy source."""

    def quality(*overrides: str, **model: Any) -> str:
        return plan.quality_context(compose_run_config(list(overrides)), fake_setup(tmp_path, **model))

    base = quality("workload=chat")
    for other in (
        ["workload=batch"],
        ["workload=chat", "workload.rate=4"],
        ["workload=chat", "workload.slo.tpot_ms=500"],
        ["workload=chat", "workload.repeats=3"],
        ["workload=chat", "target.cpu_active_watts_per_core=9"],
    ):
        assert quality(*other) == base, other
    other_prompts = fake_setup(tmp_path)
    other_prompts.workload.prompts += 1
    assert plan.quality_context(compose_run_config(["workload=chat"]), other_prompts) == base
    assert quality("workload=chat", "quality.batch_size=2") != base
    assert quality("workload=chat", "quality.num_sequences=3") != base
    assert quality("workload=chat", "quality.reference=gguf") != base  # compared with another model
    assert quality("workload=chat", weights="cd" * 32) != base
    assert quality("workload=chat", target=target_spec(cores=8)) != base
    # a smaller memory budget (a big GPU standing in for a small one) or another preset name
    # decides what fits, not how a candidate that fits measures
    assert quality("workload=chat", target=target_spec(name="box", memory_bytes=3 * GIB)) == base
    other_text = fake_setup(tmp_path)
    other_text.quality_tokens[0, 0] = 9
    assert plan.quality_context(compose_run_config(["workload=chat"]), other_text) != base
    monkeypatch.setattr(plan, "STORE_SCHEMA", plan.STORE_SCHEMA + 1)
    assert quality("workload=chat") != base  # rows of another store schema are not read
    monkeypatch.undo()
    monkeypatch.setattr(plan, "PROTOCOL_VERSION", measure.PROTOCOL_VERSION + 1)
    assert quality("workload=chat") != base  # a new protocol measures quality afresh too


def test_a_run_under_a_smaller_memory_budget_reuses_what_the_full_one_measured(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))  # the context, not the space

    def context(target: Any) -> str:
        setup = planned_setup(fake_setup(tmp_path, target=target), "hf-dir")
        return plan.plan_search(compose_run_config(["workload=batch"]), setup).context

    full = context(target_spec())
    assert context(target_spec(memory_bytes=4 * GIB, name="stand-in")) == full
    assert context(target_spec(cores=8)) != full  # another machine measures otherwise
    assert context(target_spec(cpu_model="Other CPU")) != full


def test_a_streams_own_longest_request_sizes_the_memory_check(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace's requests are not bounded by the workload's length fields: the memory check sizes
    each sequence for the longest request the measured streams hold, as the serving engine does."""
    candidate = SimpleNamespace(label=lambda: "c")
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([candidate], []))
    monkeypatch.setattr(plan, "baseline_candidate", lambda *a, **k: candidate)
    monkeypatch.setattr(plan, "_within_row_limits", lambda valid, rows, cfg: (valid, []))
    seen: list[Any] = []
    monkeypatch.setattr(plan, "memory_fit_reason", lambda *args: seen.append(args[-1]) or "too big")
    setup = planned_setup(fake_setup(tmp_path), "hf-dir")
    setup.streams = {
        1.0: SimpleNamespace(longest_request_tokens=900),
        2.0: SimpleNamespace(longest_request_tokens=4000),
    }
    with contextlib.suppress(Exception):  # what follows the memory check is not this test's
        plan.plan_search(compose_run_config(["workload=batch"]), setup)
    assert seen == [4000]
    seen.clear()
    setup.streams = None  # offline: the workload's own bound
    with contextlib.suppress(Exception):
        plan.plan_search(compose_run_config(["workload=batch"]), setup)
    assert seen == [None]


def test_the_fp32_reference_leaves_the_quality_protocol_as_stores_before_the_choice_keyed_it() -> None:
    fp32 = plan.quality_protocol(compose_run_config([]), TEXT)
    assert set(fp32) == {
        "protocol_version",
        "quality_text_sha256",
        "quality_sequences",
        "quality_seq_tokens",
        "quality_batch_size",
    }
    for reference in ("gguf", "bf16"):
        other = plan.quality_protocol(compose_run_config([f"quality.reference={reference}"]), TEXT)
        assert other == fp32 | {"quality_reference": reference}


def test_a_gguf_reference_makes_the_gguf_as_shipped_the_baseline(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    setup = planned_setup(fake_setup(tmp_path), "gguf")
    overrides = ["workload=batch", "space=cpu-llamacpp", "space.baseline.batch_size=4"]
    baseline = plan.plan_search(compose_run_config([*overrides, "quality.reference=gguf"]), setup).baseline
    assert (baseline.backend, baseline.settings.label(), baseline.batch_size) == ("llamacpp", "gguf", 4)
    assert plan.plan_search(compose_run_config(overrides), setup).baseline.backend == "torch"


def test_a_gguf_reference_llamacpp_cannot_run_here_is_refused_before_any_candidate(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.backends import installed

    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    monkeypatch.setattr(installed, "has_module", lambda name: name != "llama_cpp")
    setup = planned_setup(fake_setup(tmp_path), "gguf")
    cfg = compose_run_config(["workload=batch", "space=cpu-llamacpp", "quality.reference=gguf"])
    with pytest.raises(UserError) as info:
        plan.plan_search(cfg, setup)
    assert info.value.field == "quality.reference" and "llama-cpp-python" in info.value.problem
    plan.plan_search(compose_run_config(["workload=batch", "space=cpu-llamacpp"]), setup)  # fp32: torch


def test_a_half_precision_reference_the_target_cannot_run_is_refused(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    old_cpu = planned_setup(fake_setup(tmp_path, target=target_spec(bf16=False)), "hf-dir")
    with pytest.raises(UserError) as info:
        plan.plan_search(compose_run_config(["workload=batch", "quality.reference=bf16"]), old_cpu)
    assert info.value.field == "quality.reference" and "no native bf16" in info.value.problem
    assert "quality.reference=fp32" in info.value.fix
    bf16 = plan.plan_search(
        compose_run_config(["workload=batch", "quality.reference=bf16"]),
        planned_setup(fake_setup(tmp_path), "hf-dir"),
    )
    assert (bf16.baseline.backend, bf16.baseline.settings.precision) == ("torch", "bf16")


def test_a_reference_the_device_cannot_hold_is_refused_before_any_candidate(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the device's memory, not the candidates' budget: a big GPU standing in for a small
    one (target.memory_gib) still holds the reference."""
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    big = planned_setup(fake_setup(tmp_path), "gguf")
    big.model.shape = replace(SMOLLM2_SHAPE, num_parameters=10**14)  # 400 TB in fp32
    with pytest.raises(UserError) as info:
        plan.plan_search(compose_run_config(["workload=batch"]), big)
    assert info.value.field == "quality.reference"
    assert "fp32 eager reference of this 100000.0 B-parameter model needs" in info.value.problem
    assert "quality.reference=gguf" in info.value.fix
    hf_dir = planned_setup(fake_setup(tmp_path), "hf-dir")
    hf_dir.model.shape = big.model.shape
    with pytest.raises(UserError) as info:
        plan.plan_search(compose_run_config(["workload=batch"]), hf_dir)
    assert "machine with more memory" in info.value.fix  # not even its bf16 copy fits
    gpu = target_spec(kind="cuda", memory_bytes=1 * GIB)  # a 1 GiB budget on an 80 GB GPU
    stand_in = planned_setup(fake_setup(tmp_path, target=gpu), "hf-dir")
    plan.plan_search(compose_run_config(["workload=batch"]), stand_in)  # SmolLM2's 0.5 GB fp32 fits


@pytest.mark.parametrize(
    ("fp16_target", "shipped", "suggested"),
    [(True, "bf16", "bf16"), (True, "fp16", "fp16"), (False, "fp16", "bf16"), (True, None, "bf16")],
)
def test_a_checkpoint_whose_fp32_copy_cannot_fit_is_pointed_to_its_own_half_precision(
    tmp_path, monkeypatch: pytest.MonkeyPatch, fp16_target: bool, shipped: str | None, suggested: str
) -> None:
    """25 B parameters on an 80 GB GPU: 100 GB in fp32, 50 GB in half precision: the checkpoint's
    own where the target runs it, else bf16."""
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    setup = planned_setup(fake_setup(tmp_path, target=target_spec(kind="cuda", fp16=fp16_target)), "hf-dir")
    setup.model.shape = replace(SMOLLM2_SHAPE, num_parameters=25 * 10**9, checkpoint_precision=shipped)
    with pytest.raises(UserError) as info:
        plan.plan_search(compose_run_config(["workload=batch"]), setup)
    assert "fp32 eager reference of this 25.0 B-parameter model needs" in info.value.problem
    assert info.value.fix.endswith(f"quality.reference={suggested}")
    planned = plan.plan_search(
        compose_run_config(["workload=batch", f"quality.reference={suggested}"]), setup
    )
    assert planned.baseline.settings.precision == suggested  # an fp32 baseline would not fit either


@pytest.mark.parametrize(
    ("reference", "shipped", "warned"),
    [
        ("bf16", "fp32", True),
        ("bf16", "fp16", True),
        ("bf16", "bf16", False),
        ("fp32", "bf16", False),
        ("bf16", None, False),
    ],
)
def test_a_half_precision_reference_that_rounds_the_checkpoint_is_warned_of(
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reference: str,
    shipped: str | None,
    warned: bool,
) -> None:
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    setup = planned_setup(fake_setup(tmp_path), "hf-dir")
    setup.model.shape = replace(SMOLLM2_SHAPE, checkpoint_precision=shipped)
    with caplog.at_level("WARNING", logger="optimizer.search.plan"):
        plan.plan_search(compose_run_config(["workload=batch", f"quality.reference={reference}"]), setup)
    assert (f"rounds this {shipped} checkpoint's weights" in caplog.text) is warned


@pytest.mark.parametrize(
    "preset", ["cpu-default", "cpu-agent", "cpu-batch", "cpu-full", "cpu-ort", "cpu-llamacpp"]
)
def test_a_cpu_presets_baseline_runs_a_bf16_checkpoint_in_bf16(
    tmp_path, monkeypatch: pytest.MonkeyPatch, preset: str
) -> None:
    """As transformers 5 loads it by default: an fp32 copy would inflate every ratio to it."""
    monkeypatch.setattr(plan, "enumerate_candidates", lambda *a: ([], []))
    setup = planned_setup(fake_setup(tmp_path), "hf-dir")
    cfg = compose_run_config(["workload=batch", f"space={preset}"])
    assert plan.plan_search(cfg, setup).baseline.settings.precision == "fp32"  # SmolLM2's conversion
    setup.model.shape = replace(SMOLLM2_SHAPE, checkpoint_precision="bf16")
    assert plan.plan_search(cfg, setup).baseline.settings.precision == "bf16"
