"""The llama.cpp backend's settings and rules: pure values, no llama_cpp needed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from optimizer.backends import installed as installed_module
from optimizer.backends.llamacpp import spec as spec_module
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.llamacpp.spec import SPEC
from optimizer.backends.llamacpp.weights import CONVERTER_ENV
from optimizer.backends.registry import SPECS_BY_NAME, spec_for
from optimizer.config import LLAMACPP_WEIGHT_TYPES, LlamaCppAxes, SpaceConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.space import Candidate, enumerate_candidates, exclusion_reason

LIBRARY_TYPES = frozenset({"F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q4_1"})


@pytest.fixture
def llamacpp_installed(installed: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-cpp-python present (a CPU build) whose quantizer knows LIBRARY_TYPES."""
    installed(modules={"llama_cpp"})
    monkeypatch.setattr(installed_module, "llamacpp_has_cuda", lambda: False)
    monkeypatch.setattr(installed_module, "llamacpp_ftypes", lambda: LIBRARY_TYPES)


def test_settings_defaults_label_and_registry() -> None:
    s = LlamaCppSettings()
    assert (s.weight_type, s.kv_type, s.flash_attention, s.n_batch, s.n_ubatch) == (
        "gguf",
        "f16",
        True,
        512,
        512,
    )
    assert s.label() == "gguf"
    assert LlamaCppSettings("Q8_0", "q8_0", True, 256, 128).label() == "Q8_0 kv-q8_0 nb256/128"
    assert spec_for(s) is SPEC and SPECS_BY_NAME["llamacpp"] is SPEC
    assert not s.requantized and LlamaCppSettings("Q4_K_M").requantized


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"weight_type": "Q9_9"}, "settings.weight_type"),
        ({"weight_type": "q8_0"}, "settings.weight_type"),  # names as llama-quantize spells them
        ({"kv_type": "q5_1"}, "settings.kv_type"),
        ({"flash_attention": "true"}, "settings.flash_attention"),
        ({"n_batch": 0}, "settings.n_batch"),
        ({"n_ubatch": 64.0}, "settings.n_ubatch"),
        ({"prefix_sharing": 1}, "settings.prefix_sharing"),
    ],
)
def test_invalid_settings_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(UserError) as info:
        LlamaCppSettings(**values)
    assert info.value.field == field


def test_probe_settings_are_the_numerics_only() -> None:
    a = Candidate(LlamaCppSettings(n_batch=256, n_ubatch=256), batch_size=1, threads=1)
    b = Candidate(LlamaCppSettings(), batch_size=16, threads=2)
    assert a.numerics_key() == b.numerics_key()
    assert a.numerics_key() != Candidate(LlamaCppSettings(kv_type="q8_0"), 1, 1).numerics_key()
    assert a.numerics_key() != Candidate(LlamaCppSettings("Q8_0"), 1, 1).numerics_key()
    assert a.numerics_key() == Candidate(LlamaCppSettings(prefix_sharing=True), 1, 1).numerics_key()


def test_candidate_round_trips_through_a_recipe_dict() -> None:
    candidate = Candidate(LlamaCppSettings("Q6_K", "q8_0", True, 256, 128), batch_size=16, threads=2)
    data = candidate.to_dict()
    assert data["backend"] == "llamacpp" and data["weight_type"] == "Q6_K"
    assert Candidate.from_dict(data) == candidate


@pytest.mark.usefixtures("llamacpp_installed")
@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (LlamaCppSettings(), None),
        (LlamaCppSettings("Q4_K_M", "q8_0"), None),
        (LlamaCppSettings("IQ4_NL"), "quantizer has no IQ4_NL (LLAMA_FTYPE_MOSTLY_IQ4_NL)"),
        (LlamaCppSettings(kv_type="q4_0", flash_attention=False), "V cache (q4_0) only with flash attention"),
        (LlamaCppSettings(flash_attention=False), None),
        (LlamaCppSettings(n_batch=256, n_ubatch=512), "n_ubatch 512 > n_batch 256"),
    ],
)
def test_rules(settings: LlamaCppSettings, reason: str | None, make_target) -> None:  # type: ignore[no-untyped-def]
    got = SPEC.exclusion_reason(settings, make_target())
    assert got == reason if reason is None else reason in (got or "")


def test_not_installed_is_excluded_with_the_extra(installed: Callable[..., None], make_target) -> None:  # type: ignore[no-untyped-def]
    installed()
    reason = SPEC.exclusion_reason(LlamaCppSettings(), make_target())
    assert reason is not None and "llama-cpp-python" in reason and "wattsmith[llamacpp]" in reason


@pytest.mark.usefixtures("llamacpp_installed")
def test_a_gpu_target_needs_a_cuda_build(monkeypatch: pytest.MonkeyPatch, make_target) -> None:  # type: ignore[no-untyped-def]
    gpu = make_target(kind="cuda")
    reason = SPEC.exclusion_reason(LlamaCppSettings(), gpu)
    assert reason is not None and "CUDA build" in reason and "GGML_CUDA" in reason
    monkeypatch.setattr(installed_module, "llamacpp_has_cuda", lambda: True)
    assert SPEC.exclusion_reason(LlamaCppSettings(), gpu) is None


def test_a_model_directory_needs_the_converter(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    assert SPEC.model_reason(LlamaCppSettings(), "gguf") is None
    reason = SPEC.model_reason(LlamaCppSettings(), "hf-dir")
    assert reason is not None and "GGUF" in reason and CONVERTER_ENV in reason
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text("")
    monkeypatch.setenv(CONVERTER_ENV, str(script))
    assert SPEC.model_reason(LlamaCppSettings(), "hub") is None


@pytest.mark.usefixtures("llamacpp_installed")
def test_the_space_excludes_by_model_format_and_rules(monkeypatch: pytest.MonkeyPatch, make_target) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    axes = LlamaCppAxes(
        weight_types=["gguf", "Q4_K_M", "IQ4_NL"], kv_types=["f16", "q8_0"], flash_attention=[True, False]
    )
    space = SpaceConfig(backends=["llamacpp"], batch_sizes=[1, 16], threads=[0], llamacpp=axes)
    valid, excluded = enumerate_candidates(space, make_target(), serving=True, model_format="gguf")
    assert len(valid) + len(excluded) == 3 * 2 * 2 * 2
    assert {c.settings.weight_type for c in valid} == {"gguf", "Q4_K_M"}
    assert all(c.threads == 4 for c in valid)  # threads 0: all cores
    reasons = {r for _, r in excluded}
    assert any("IQ4_NL" in r for r in reasons) and any("flash attention" in r for r in reasons)
    _, none_valid = enumerate_candidates(space, make_target(), serving=False, model_format="hf-dir")
    assert len(none_valid) == len(valid) + len(excluded)
    assert exclusion_reason(valid[0], make_target(), model_format="hf-dir") is not None
    assert exclusion_reason(valid[0], make_target()) is None  # no format given: not checked


def test_footprint_and_matmul_kind() -> None:
    fp = SPEC.footprint(LlamaCppSettings("Q8_0", "q8_0"), 30)
    assert fp.weight_bytes == pytest.approx(8.5 / 8) and fp.kv_bytes == pytest.approx(34 / 32)
    assert fp.activation_bytes == 4.0 and not fp.prompt_logits
    # the memory check never understates (k-quant mixes and fallbacks), the roofline never overstates
    for weight_type in LLAMACPP_WEIGHT_TYPES:
        settings = LlamaCppSettings(weight_type)
        assert SPEC.moved_bytes(settings, 30).weight_bytes <= SPEC.footprint(settings, 30).weight_bytes
    assert SPEC.footprint(LlamaCppSettings("Q4_K_M"), 30).weight_bytes == pytest.approx(8.5 / 8)
    assert SPEC.moved_bytes(LlamaCppSettings("Q4_K_M"), 30).weight_bytes == pytest.approx(4.5 / 8)
    assert SPEC.footprint(LlamaCppSettings(), 30).weight_bytes == 2.0  # as shipped: taken as f16
    assert SPEC.moved_bytes(LlamaCppSettings(), 30).weight_bytes < 0.2  # as shipped: any type
    assert SPEC.matmul_kind(LlamaCppSettings("F16")) == "reduced"
    assert SPEC.matmul_kind(LlamaCppSettings("Q4_K_M")) == "int8"
    assert SPEC.workload_reason(LlamaCppSettings(), 512, True) is not None
    assert SPEC.workload_reason(LlamaCppSettings(), 64, True) is None
    sharing = LlamaCppSettings(prefix_sharing=True)
    assert "serving only" in (SPEC.workload_reason(sharing, 8, False) or "")
    assert SPEC.workload_reason(sharing, 8, True) is None and sharing.label() == "gguf prefix"


@pytest.mark.usefixtures("llamacpp_installed")
def test_more_sequences_than_n_batch_are_excluded_with_the_fix(make_target) -> None:  # type: ignore[no-untyped-def]
    """Every step decodes one token per sequence in one llama_decode of <= n_batch tokens; a
    context with more sequences than n_batch aborted the process (GGML_ASSERT n_outputs_max)."""
    small = LlamaCppSettings(n_batch=32, n_ubatch=32)
    reason = SPEC.workload_reason(small, 48, serving=False) or ""
    assert "batch 48 > n_batch 32" in reason and "space.llamacpp.n_batch" in reason
    assert SPEC.workload_reason(small, 32, serving=False) is None  # as many as n_batch: fine
    axes = LlamaCppAxes(n_batch=[32, 64], n_ubatch=[32])
    space = SpaceConfig(backends=["llamacpp"], batch_sizes=[16, 48], threads=[1], llamacpp=axes)
    valid, excluded = enumerate_candidates(space, make_target(), serving=False, model_format="gguf")
    assert {(c.batch_size, c.settings.n_batch) for c in valid} == {(16, 32), (16, 64), (48, 64)}
    assert [(c.batch_size, c.settings.n_batch) for c, _ in excluded] == [(48, 32)]


def test_the_presets_name_llamacpp_candidates() -> None:
    preset = compose_run_config(["space=cpu-llamacpp"]).space
    assert preset.backends == ["llamacpp"] and "Q8_0" in preset.llamacpp.weight_types
    default = compose_run_config([]).space
    assert [e for e in default.extra if e["backend"] == "llamacpp"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("space.llamacpp.weight_types=[Q9]", "space.llamacpp.weight_types"),
        ("space.llamacpp.kv_types=[f32]", "space.llamacpp.kv_types"),
        ("space.llamacpp.n_batch=[0]", "space.llamacpp.n_batch"),
    ],
)
def test_bad_axes_name_the_field(override: str, field: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([override])
    assert info.value.field == field


def test_the_ftypes_are_read_without_loading_the_library() -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")
    installed_module.llamacpp_ftypes.cache_clear()
    types = installed_module.llamacpp_ftypes()
    assert {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "F16"} <= types and "GUESSED" not in types


def test_every_weight_type_has_its_bits() -> None:
    assert set(spec_module.MOVED_BITS) == set(spec_module.FOOTPRINT_BITS) == set(LLAMACPP_WEIGHT_TYPES)


@pytest.mark.parametrize("name", [t for t in LLAMACPP_WEIGHT_TYPES if t not in ("gguf", "F16", "BF16")])
def test_a_weight_types_bits_are_its_ggml_block_layout(name: str) -> None:
    """Every quantized type (a mix, _M or _S, at its base type's block): the layout gguf records."""
    constants = pytest.importorskip("gguf.constants")
    base = name.removesuffix("_M").removesuffix("_S")
    weights, size = constants.GGML_QUANT_SIZES[constants.GGMLQuantizationType[base]]
    assert spec_module.MOVED_BITS[name] == size * 8 / weights


def test_the_rules_load_no_llama_cpp() -> None:
    code = (
        "import sys\n"
        "from optimizer.backends.llamacpp.spec import SPEC\n"
        "from optimizer.backends.llamacpp.settings import LlamaCppSettings\n"
        "from unit.factories import target_spec\n"
        "for kind in ('cpu', 'cuda'):\n"
        "    SPEC.exclusion_reason(LlamaCppSettings('Q4_K_M'), target_spec(kind=kind))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'llama_cpp'))\n"
    )
    tests_dir = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=tests_dir
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
