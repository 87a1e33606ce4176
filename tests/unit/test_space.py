"""Candidates are frozen values with stable keys; the rules say which ones a target can run."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.config import BaselineConfig, SpaceConfig, TorchAxes
from optimizer.errors import UserError
from optimizer.space import (
    Candidate,
    TorchSettings,
    baseline_candidate,
    dequantized_model_needed,
    enumerate_candidates,
    exclusion_reason,
    reference_candidate,
    reference_settings,
    searched_backends,
)


def space(**torch_axes) -> SpaceConfig:
    batch_sizes = torch_axes.pop("batch_sizes", [1])
    threads = torch_axes.pop("threads", [0])
    axes = {
        "precisions": ["fp32"],
        "quantizations": ["none"],
        "kv_caches": ["dynamic"],
        "compile": [False],
        "attention": ["sdpa"],
    } | torch_axes
    return SpaceConfig(batch_sizes=batch_sizes, threads=threads, torch=TorchAxes(**axes))


def test_candidate_round_trips_through_a_dict(make_candidate) -> None:
    cand = make_candidate(batch_size=8, threads=2, precision="bf16", quantization="int8-weight")
    data = cand.to_dict()
    assert data["backend"] == "torch"
    assert data["batch_size"] == 8 and data["threads"] == 2
    assert data["precision"] == "bf16" and data["quantization"] == "int8-weight"
    again = Candidate.from_dict(data)
    assert again == cand
    assert again.key() == cand.key()


def test_key_is_stable_and_depends_on_batch_size(make_candidate) -> None:
    a = make_candidate(batch_size=1)
    assert a.key() == make_candidate(batch_size=1).key()
    assert len(a.key()) == 16
    assert a.key() != make_candidate(batch_size=2).key()
    assert a.key() != make_candidate(batch_size=1, threads=1).key()
    assert a.key() != make_candidate(batch_size=1, precision="bf16").key()


def test_numerics_key_ignores_batch_size_and_threads(make_candidate) -> None:
    a = make_candidate(batch_size=1, threads=1)
    b = make_candidate(batch_size=64, threads=4)
    assert a.numerics_key() == b.numerics_key()
    assert a.numerics_key() != make_candidate(quantization="int8-dynamic").numerics_key()
    assert a.numerics_key() != make_candidate(kv_cache="quanto-4").numerics_key()
    assert make_candidate(kv_cache="hqq-4").numerics_key() != make_candidate(kv_cache="hqq-8").numerics_key()
    # the probe scores a forward pass: an unquantized cache, compile and the loop do not enter it
    same = make_candidate(kv_cache="static", compile=True, loop="graph", batch_size=64)
    assert a.numerics_key() == same.numerics_key()
    assert a.numerics_key() != make_candidate(attention="eager").numerics_key()


def test_candidates_are_frozen(make_candidate) -> None:
    cand = make_candidate()
    with pytest.raises(AttributeError):
        cand.batch_size = 2  # type: ignore[misc]


def test_from_dict_unknown_backend_is_a_user_error(make_candidate) -> None:
    data = make_candidate().to_dict() | {"backend": "tensorflow"}
    with pytest.raises(UserError) as info:
        Candidate.from_dict(data)
    assert info.value.field == "settings.backend"


def test_from_dict_unknown_field_is_a_user_error(make_candidate) -> None:
    data = make_candidate().to_dict() | {"warp_speed": 9}
    with pytest.raises(UserError) as info:
        Candidate.from_dict(data)
    assert info.value.field == "settings"
    assert "warp_speed" in info.value.problem


def test_from_dict_non_integer_batch_size_is_a_user_error(make_candidate) -> None:
    with pytest.raises(UserError):
        Candidate.from_dict(make_candidate().to_dict() | {"batch_size": "many"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -4),
        ("batch_size", 16.9),
        ("batch_size", True),
        ("batch_size", "16"),
        ("threads", -2),
        ("threads", 2.0),
        ("threads", False),
        ("replicas", True),
        ("tensor_parallel", 2.0),
    ],
)
def test_from_dict_names_a_bad_count(make_candidate, field: str, value: object) -> None:
    """A hand-edited recipe's batch 16.9 was truncated to 16, batch 0 and threads -2 accepted."""
    with pytest.raises(UserError) as info:
        Candidate.from_dict(make_candidate().to_dict() | {field: value})
    assert info.value.field == f"settings.{field}"


def test_from_dict_names_a_missing_count(make_candidate) -> None:
    data = make_candidate().to_dict()
    del data["threads"]
    with pytest.raises(UserError) as info:
        Candidate.from_dict(data)
    assert info.value.field == "settings.threads"
    assert Candidate.from_dict(make_candidate(threads=0).to_dict()).threads == 0  # the library's default


def test_a_whole_number_for_a_float_setting_keys_like_the_float() -> None:
    """kv_offload_gib 2 (YAML, space.extra) and 2.0 (the grid) are one candidate with one key; a
    candidate whose value already has the declared type keeps the key it had."""
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

    values = {"backend": "torch-cb", "batch_size": 64, "threads": 0}
    whole = Candidate.from_dict(values | {"kv_offload_gib": 2})
    grid = Candidate(ContinuousBatchingSettings(kv_offload_gib=2.0), batch_size=64, threads=0)
    assert whole.key() == grid.key() == "069c65c5b2d80f12"  # the key stores hold for the grid's value
    assert whole.to_dict()["kv_offload_gib"] == 2.0


def test_label_names_the_settings(make_candidate) -> None:
    label = make_candidate(batch_size=8, threads=2, precision="bf16", quantization="int8-weight").label()
    assert label == "torch bf16 int8-weight kv=dynamic b8 t2"
    assert make_candidate(threads=0).label().endswith("b1")


def test_cpu_space_counts_and_bf16_exclusion(make_target) -> None:
    cfg = space(
        batch_sizes=[1, 8, 32, 64],
        precisions=["fp32", "bf16"],
        quantizations=["none", "int8-weight", "int8-dynamic"],
    )
    valid, excluded = enumerate_candidates(cfg, make_target(bf16=True))
    assert len(valid) == 2 * 3 * 4 and not excluded
    valid, excluded = enumerate_candidates(cfg, make_target(bf16=False))
    assert len(valid) == 12
    assert all(c.settings.precision == "fp32" for c in valid)
    assert len(excluded) == 12
    assert {reason for _, reason in excluded} == {"target has no native bf16"}
    keys = [c.key() for c in valid] + [c.key() for c, _ in excluded]
    assert len(keys) == len(set(keys))


def test_cpu_exclusion_reasons(make_target) -> None:
    cfg = space(
        precisions=["bf16"],
        quantizations=["none", "int4-weight", "fp8"],
        kv_caches=["dynamic", "static", "offloaded", "quanto-4"],
        compile=[False, True],
    )
    valid, excluded = enumerate_candidates(cfg, make_target(bf16=True))
    reasons = {(c.settings.quantization, c.settings.kv_cache, c.settings.compile): r for c, r in excluded}
    assert reasons[("int4-weight", "dynamic", False)] == "int4-weight kernels need a CUDA GPU"
    assert reasons[("fp8", "dynamic", False)] == "fp8 kernels need a CUDA GPU"
    assert "needs a GPU target" in reasons[("none", "offloaded", False)]
    assert reasons[("none", "dynamic", True)] == "torch.compile needs a static KV cache (fixed shapes)"
    assert reasons[("none", "quanto-4", True)] == "quantized KV caches do not compile"
    got = {(c.settings.quantization, c.settings.kv_cache, c.settings.compile) for c in valid}
    assert got == {
        ("none", "dynamic", False),
        ("none", "static", False),
        ("none", "static", True),
        ("none", "quanto-4", False),
    }


def test_threads_above_cores_are_excluded(make_target) -> None:
    valid, excluded = enumerate_candidates(space(threads=[1, 2, 8]), make_target(cores=4))
    assert sorted(c.threads for c in valid) == [1, 2]
    assert [(c.threads, r) for c, r in excluded] == [(8, "threads 8 > 4 cores")]


def test_threads_zero_means_all_cores_on_cpu_and_zero_on_cuda(make_target) -> None:
    valid, _ = enumerate_candidates(space(threads=[0]), make_target(cores=6))
    assert [c.threads for c in valid] == [6]
    # [0, cores] collapses into one candidate
    valid, _ = enumerate_candidates(space(threads=[0, 6]), make_target(cores=6))
    assert [c.threads for c in valid] == [6]
    valid, _ = enumerate_candidates(space(threads=[0, 1]), make_target(kind="cuda"))
    assert [c.threads for c in valid] == [0]


def test_cuda_target_allows_gpu_only_settings(make_target) -> None:
    gpu = make_target(kind="cuda")
    assert exclusion_reason(Candidate(TorchSettings("bf16", "fp8"), 1, 0), gpu) is None
    assert exclusion_reason(Candidate(TorchSettings("bf16", "int4-weight"), 1, 0), gpu) is None
    assert exclusion_reason(Candidate(TorchSettings(kv_cache="offloaded"), 1, 0), gpu) is None
    assert "bf16 activations" in str(exclusion_reason(Candidate(TorchSettings("fp32", "fp8"), 1, 0), gpu))
    no_fp8 = make_target(kind="cuda", fp8=False)
    assert "8.9" in str(exclusion_reason(Candidate(TorchSettings("bf16", "fp8"), 1, 0), no_fp8))


def test_settings_of_an_unknown_type_have_no_rules(make_target) -> None:
    candidate = Candidate(object(), 1, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="object"):
        exclusion_reason(candidate, make_target())


def test_fp16_on_a_cpu_without_fp16_is_excluded(make_target) -> None:
    reason = exclusion_reason(Candidate(TorchSettings("fp16"), 1, 1), make_target(fp16=False))
    assert reason is not None and "fp16" in reason


def test_baseline_candidate_uses_all_cores_on_cpu(make_target) -> None:
    cfg = SpaceConfig(baseline=BaselineConfig(batch_size=2))
    base = baseline_candidate(cfg, make_target(cores=3))
    assert (base.batch_size, base.threads) == (2, 3)
    assert base.settings == TorchSettings()
    assert baseline_candidate(cfg, make_target(kind="cuda")).threads == 0


@pytest.mark.parametrize(("checkpoint", "baseline"), [("bf16", "bf16"), ("fp16", "fp16"), (None, "fp32")])
def test_an_auto_baseline_runs_in_the_checkpoints_own_precision(make_target, checkpoint, baseline) -> None:
    """What transformers 5 loads unless told otherwise; fp32 where the config names no dtype."""
    cfg = SpaceConfig(baseline=BaselineConfig(precision="auto"))
    assert baseline_candidate(cfg, make_target(), "fp32", checkpoint).settings.precision == baseline
    cfg.baseline.precision = "fp32"  # a stated precision is kept
    assert baseline_candidate(cfg, make_target(), "fp32", checkpoint).settings.precision == "fp32"
    assert baseline_candidate(cfg, make_target(), "bf16", checkpoint).settings.precision == "bf16"


def test_reference_settings_are_fp32_eager() -> None:
    ref = reference_settings()
    assert (ref.precision, ref.quantization, ref.kv_cache, ref.compile) == ("fp32", "none", "dynamic", False)


def test_the_reference_candidate_runs_at_batch_1_on_all_cores(make_target) -> None:
    fp32 = reference_candidate("fp32", make_target(cores=3))
    assert (fp32.settings, fp32.batch_size, fp32.threads) == (reference_settings(), 1, 3)
    gguf = reference_candidate("gguf", make_target(kind="cuda"))
    assert (gguf.settings, gguf.batch_size, gguf.threads) == (LlamaCppSettings(), 1, 0)
    assert not gguf.settings.requantized and gguf.settings.kv_type == "f16"  # the file as shipped


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_a_half_precision_reference_is_the_checkpoint_in_it_and_so_is_the_baseline(make_target, half) -> None:
    ref = reference_candidate(half, make_target(cores=3))
    assert (ref.settings, ref.batch_size, ref.threads) == (reference_settings(half), 1, 3)
    assert (ref.settings.precision, ref.settings.quantization, ref.settings.kv_cache) == (
        half,
        "none",
        "dynamic",
    )
    cfg = SpaceConfig(baseline=BaselineConfig(batch_size=2, kv_cache="static"))
    base = baseline_candidate(cfg, make_target(cores=3), reference=half)
    assert (base.settings.precision, base.settings.kv_cache, base.batch_size) == (half, "static", 2)
    # with the fp32 reference the baseline is space.baseline as configured, whatever its precision
    cfg.baseline.precision = "bf16"
    assert baseline_candidate(cfg, make_target(), reference="fp32").settings.precision == "bf16"


def test_a_gguf_baseline_is_the_file_as_shipped_at_the_baseline_batch_size(make_target) -> None:
    cfg = SpaceConfig(baseline=BaselineConfig(batch_size=2))
    base = baseline_candidate(cfg, make_target(cores=3), reference="gguf")
    assert (base.settings, base.batch_size, base.threads) == (LlamaCppSettings(), 2, 3)


@pytest.mark.parametrize(
    ("reference", "backends", "extra", "needed"),
    [
        ("fp32", ["llamacpp"], [], True),  # the fp32 reference is the de-quantized model
        ("bf16", ["llamacpp"], [], True),  # and so is a bf16 one
        ("gguf", ["llamacpp"], [], False),
        ("gguf", ["llamacpp", "torch"], [], True),
        ("gguf", ["llamacpp"], [{"batch_size": 4}], True),  # an extra candidate is torch by default
        ("gguf", ["llamacpp"], [{"backend": "llamacpp", "batch_size": 4}], False),
    ],
)
def test_a_gguf_is_dequantized_only_for_what_cannot_read_it(
    reference: str, backends: list[str], extra: list[dict], needed: bool
) -> None:
    space = SpaceConfig(backends=backends, extra=extra)
    assert dequantized_model_needed(searched_backends(space), reference) is needed


def test_enumeration_follows_the_configured_order(make_target) -> None:
    # precisions outer, batch sizes inner, each as listed (fp32 before bf16: not sorted)
    cfg = space(batch_sizes=[1, 4], precisions=["fp32", "bf16"])
    valid, _ = enumerate_candidates(cfg, make_target())
    assert [(c.settings.precision, c.batch_size) for c in valid] == [
        ("fp32", 1),
        ("fp32", 4),
        ("bf16", 1),
        ("bf16", 4),
    ]


def test_extra_candidates_come_first_and_are_not_repeated(make_target) -> None:
    cfg = space(batch_sizes=[1, 2])
    cfg.extra = [{"batch_size": 2, "precision": "fp32"}, {"batch_size": 512, "precision": "bf16"}]
    valid, excluded = enumerate_candidates(cfg, make_target(cores=4))
    assert [(c.batch_size, c.settings.precision, c.threads) for c in valid] == [
        (2, "fp32", 4),  # threads 0 means all cores on a CPU, as on the grid
        (512, "bf16", 4),
        (1, "fp32", 4),
    ]
    assert excluded == []


def test_extra_entries_that_spell_one_deployment_are_one_candidate(make_target) -> None:
    """Threads left to their default on a CPU are all cores: the second entry says the same."""
    cfg = space(batch_sizes=[1])
    cfg.extra = [
        {"batch_size": 512, "precision": "bf16"},
        {"batch_size": 512, "precision": "bf16", "threads": 4},
        {"batch_size": 1, "precision": "fp32"},  # the grid's own
    ]
    valid, _ = enumerate_candidates(cfg, make_target(cores=4))
    assert [(c.batch_size, c.settings.precision, c.threads) for c in valid] == [
        (512, "bf16", 4),
        (1, "fp32", 4),
    ]


def test_a_bad_extra_candidate_names_its_index(make_target) -> None:
    cfg = space()
    cfg.extra = [{"batch_size": 1}, {"batch_size": 1, "turbo": True}]
    with pytest.raises(UserError) as info:
        enumerate_candidates(cfg, make_target())
    assert info.value.field == "space.extra[1]"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("replicas", "two"),
        ("replicas", None),
        ("tensor_parallel", [2]),
        ("tensor_parallel", 0),
        ("batch_size", "x"),
    ],
)
def test_a_bad_count_in_an_extra_candidate_names_its_field(make_target, name: str, value: object) -> None:
    """Refused as any bad value is (exit 2, one message), not a ValueError or TypeError traceback."""
    cfg = space()
    cfg.extra = [{"batch_size": 1, "precision": "fp32", name: value}]
    with pytest.raises(UserError) as info:
        enumerate_candidates(cfg, make_target(cores=4))
    assert info.value.field == f"space.extra[0].{name}"
    assert info.value.problem == f"must be an integer >= 1, got {value!r}"


@pytest.mark.parametrize("bad", [{"precision": "fp64"}, {"kv_cache": "quanto-3"}, {"compile": "false"}])
def test_from_dict_rejects_unknown_setting_values(make_candidate, bad) -> None:
    with pytest.raises(UserError):
        Candidate.from_dict(make_candidate().to_dict() | bad)


def test_continuous_batching_rules_and_workload_kinds(make_target) -> None:
    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

    cpu, gpu = make_target(), make_target(kind="cuda")

    def reason(target: object, serving: bool = True, batch: int = 8, **settings: object) -> str | None:
        candidate = Candidate(ContinuousBatchingSettings(**settings), batch, 0)  # type: ignore[arg-type]
        return exclusion_reason(candidate, target, serving)  # type: ignore[arg-type]

    assert reason(cpu) is None and reason(cpu, serving=False) is None
    assert reason(cpu, prefix_sharing=True) is None
    assert "serving only" in str(reason(cpu, serving=False, prefix_sharing=True))
    assert "needs a GPU target" in str(reason(cpu, kv_offload_gib=4.0))
    assert reason(gpu, kv_offload_gib=4.0) is None
    assert "fp8 kernels need a CUDA GPU" in str(reason(cpu, quantization="fp8"))
    assert "flash-attn" in str(reason(cpu, attention="flash_attention_2"))
    assert "Hopper" in str(reason(cpu, attention="flash_attention_3"))


def test_flash_attention_3_needs_hopper_and_its_package(make_target, monkeypatch) -> None:
    import dataclasses
    import importlib.util

    from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
    from optimizer.space import TorchSettings

    h100 = make_target(kind="cuda")
    assert h100.gpu is not None
    a100 = dataclasses.replace(h100, gpu=dataclasses.replace(h100.gpu, compute_capability=(8, 0)))
    installed = {"flash_attn_interface"}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name in installed else real_find_spec(name, *a),
    )
    for settings in (
        TorchSettings(precision="bf16", attention="flash_attention_3"),
        ContinuousBatchingSettings(attention="flash_attention_3"),
    ):
        assert exclusion_reason(Candidate(settings, 8, 0), h100, True) is None
        assert "Hopper" in str(exclusion_reason(Candidate(settings, 8, 0), a100, True))
    installed.clear()
    reason = exclusion_reason(
        Candidate(ContinuousBatchingSettings(attention="flash_attention_3"), 8, 0), h100, True
    )
    assert "flash_attn_interface" in str(reason)


def test_serving_needs_engines_that_take_mixed_lengths(make_target, make_candidate) -> None:
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings
    from optimizer.backends.registry import SPECS_BY_NAME

    cpu, gpu = make_target(), make_target(kind="cuda")
    graph = make_candidate(batch_size=8, threads=0, precision="bf16", kv_cache="static", loop="graph")
    assert exclusion_reason(graph, gpu, serving=False) is None
    assert "offline workloads only" in str(exclusion_reason(graph, gpu, serving=True))
    assert exclusion_reason(make_candidate(batch_size=8, threads=2), cpu, serving=True) is None  # HF pads
    # genai schedules a stream itself (its Engine API, 0.18+): static batches of up to 4
    assert exclusion_reason(Candidate(OrtGenaiSettings(), 4, 2), cpu, serving=True) is None
    assert "static batches of at most 4" in str(
        exclusion_reason(Candidate(OrtGenaiSettings(), 8, 2), cpu, True)
    )
    assert SPECS_BY_NAME["ort-genai"].workload_reason(OrtGenaiSettings(), 1, True) is None


def test_the_slot_loop_serves_streams_on_a_static_cache_with_a_masking_attention(
    make_target, make_candidate
) -> None:
    cpu, gpu = make_target(), make_target(kind="cuda")
    slots = {"batch_size": 8, "threads": 0, "precision": "bf16", "kv_cache": "static", "loop": "slots"}
    for target in (cpu, gpu):  # eager on a CPU, captured on a GPU
        assert exclusion_reason(make_candidate(**slots), target, serving=True) is None
        assert exclusion_reason(make_candidate(**slots), target, serving=False) is None
    assert "static KV cache" in str(exclusion_reason(make_candidate(**slots | {"kv_cache": "dynamic"}), gpu))
    flash = make_candidate(**slots | {"attention": "flash_attention_3"})
    assert "4D mask" in str(exclusion_reason(flash, gpu))
    int8 = make_candidate(**slots | {"precision": "fp32", "quantization": "int8-dynamic"})
    assert exclusion_reason(int8, cpu) is None
    assert "not capturable" in str(exclusion_reason(int8, gpu))
    paced = make_candidate(**slots | {"step_interval_ms": 20.0})
    assert exclusion_reason(paced, gpu, serving=True) is None
    assert "loop=slots only" in str(exclusion_reason(make_candidate(step_interval_ms=20.0), gpu))
    sharing = make_candidate(**slots | {"prefix_sharing": True})
    assert exclusion_reason(sharing, cpu, serving=True) is None
    assert "serving only" in str(exclusion_reason(sharing, cpu, serving=False))
    hf_sharing = make_candidate(precision="bf16", kv_cache="static", prefix_sharing=True)
    assert "loop=slots only" in str(exclusion_reason(hf_sharing, cpu))
    replicas = dataclasses.replace(make_candidate(**slots), replicas=2)
    assert "one process" in str(exclusion_reason(replicas, make_target(cores=8)))
    by_layer = make_candidate(**slots | {"compile": True, "compile_layers": True})
    assert exclusion_reason(by_layer, gpu, serving=True) is None
    assert by_layer.settings.label().startswith("bf16 kv=static compiled=layers")
    eager_layers = make_candidate(**slots | {"compile_layers": True})
    assert "set compile=true" in str(exclusion_reason(eager_layers, gpu))
    hf_layers = make_candidate(precision="bf16", kv_cache="static", compile=True, compile_layers=True)
    assert "loop=graph or loop=slots" in str(exclusion_reason(hf_layers, gpu))


def test_static_fp8_needs_an_fp8_gpu_and_bf16(make_target) -> None:
    def reason(target: object, **settings: object) -> str | None:
        settings = {"precision": "bf16", "quantization": "fp8-static", "kv_cache": "static"} | settings
        return exclusion_reason(Candidate(TorchSettings(**settings), 8, 0), target)  # type: ignore[arg-type]

    assert "CUDA GPU" in str(reason(make_target()))
    assert reason(make_target(kind="cuda")) is None
    assert reason(make_target(kind="cuda"), loop="graph", compile=True, attention="sdpa_gqa") is None
    assert "compute capability" in str(reason(make_target(kind="cuda", fp8=False)))
    assert "bf16 activations" in str(reason(make_target(kind="cuda"), precision="fp16"))


def test_a_setting_added_later_keeps_the_keys_written_before_it() -> None:
    """step_interval_ms came after stores and recipes held torch candidates: at its default it is
    left out of the dict and the key (these digests are the ones written before it existed), set
    it is in both, and every form reads back; a sampler still sees every axis."""
    plain = Candidate(TorchSettings(), 64, 0)
    slots = Candidate(
        TorchSettings(precision="bf16", kv_cache="static", compile=True, attention="sdpa_gqa", loop="slots"),
        64,
        0,
    )
    assert (plain.key(), slots.key()) == ("a7752a231a342687", "3e0af25f1cb8f2a2")
    assert "step_interval_ms" not in slots.to_dict()
    paced = Candidate(dataclasses.replace(slots.settings, step_interval_ms=20), 64, 0)
    assert paced.to_dict()["step_interval_ms"] == 20.0 and paced.key() != slots.key()
    assert paced.settings.label().endswith("loop=slots pace=20ms")
    for candidate in (plain, slots, paced):
        assert Candidate.from_dict(candidate.to_dict()) == candidate
    assert slots.axes()["step_interval_ms"] == 0.0
    with pytest.raises(ValueError, match="step_interval_ms"):
        TorchSettings(step_interval_ms=-1.0)
    # prefix_sharing came later still: the same holds
    assert "prefix_sharing" not in paced.to_dict()
    sharing = Candidate(dataclasses.replace(slots.settings, prefix_sharing=True), 64, 0)
    assert sharing.to_dict()["prefix_sharing"] is True and sharing.key() not in (slots.key(), paced.key())
    # and compile_layers
    assert "compile_layers" not in sharing.to_dict()
    by_layer = Candidate(dataclasses.replace(slots.settings, compile_layers=True), 64, 0)
    assert by_layer.to_dict()["compile_layers"] is True and by_layer.key() != slots.key()
    assert Candidate.from_dict(by_layer.to_dict()) == by_layer
    assert sharing.settings.label().endswith("loop=slots prefix")
    assert Candidate.from_dict(sharing.to_dict()) == sharing


def test_the_prefix_sharing_axis_reaches_the_slot_loop_only(make_target) -> None:
    cfg = space(batch_sizes=[16], kv_caches=["static"], loops=["hf", "slots"], prefix_sharing=[False, True])
    valid, excluded = enumerate_candidates(cfg, make_target(), serving=True)
    sharing = {(c.settings.loop, c.settings.prefix_sharing) for c in valid}  # type: ignore[attr-defined]
    assert sharing == {("hf", False), ("slots", False), ("slots", True)}
    assert any("loop=slots only" in reason for _, reason in excluded)
    offline, _ = enumerate_candidates(cfg, make_target())
    assert not any(c.settings.prefix_sharing for c in offline)  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="space.torch.prefix_sharing"):
        TorchAxes(prefix_sharing=["yes"])  # type: ignore[list-item]


def test_the_compile_layers_axis_reaches_compiled_loops_only(make_target) -> None:
    cfg = space(
        batch_sizes=[16],
        kv_caches=["static"],
        compile=[False, True],
        loops=["hf", "slots"],
        compile_layers=[False, True],
    )
    valid, _ = enumerate_candidates(cfg, make_target(), serving=True)
    by_layer = {(c.settings.loop, c.settings.compile) for c in valid if c.settings.compile_layers}  # type: ignore[attr-defined]
    assert by_layer == {("slots", True)}
