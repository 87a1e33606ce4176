"""Target presets matched to the board's exact variant, the memory budget capped aloud, and an
empty CUDA_VISIBLE_DEVICES named when it hides the GPU NVML sees."""

from __future__ import annotations

import sys

import pytest

from optimizer import target as target_module
from optimizer.config import CONF_DIR, TargetConfig
from optimizer.config.compose import compose_preset, validated
from optimizer.errors import UserError
from optimizer.target import GIB, _preset_name, detect_target
from unit.test_target import fake_pynvml


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """NVML sees the named board; torch can use CUDA; warnings said afresh."""
    monkeypatch.setattr(target_module, "_WARNED", set())
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)

    def install(name: str, memory_gib: float = 80, capability: tuple[int, int] = (9, 0)) -> None:
        nvml = fake_pynvml(name=name, memory_gib=memory_gib, capability=capability)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)

    return install


@pytest.mark.parametrize(
    ("board", "preset"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie"),
        ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
    ],
)
def test_the_most_specific_preset_is_picked(board: str, preset: str) -> None:
    assert _preset_name(board) == preset
    assert (CONF_DIR / "target" / f"{preset}.yaml").is_file()


@pytest.mark.parametrize(
    ("board", "name"),
    [
        # variants without a preset (no datasheet figures cited) must not take the SXM card's
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("NVIDIA GH200 480GB", "gh200-480gb"),
        ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
        ("NVIDIA L40", "l40"),
    ],
)
def test_a_variant_without_a_preset_takes_no_other_boards_figures(board: str, name: str) -> None:
    assert _preset_name(board) == name
    assert not (CONF_DIR / "target" / f"{name}.yaml").is_file()


@pytest.mark.parametrize(
    ("board", "memory_gib", "capability", "bandwidth", "tflops"),
    [
        ("NVIDIA H100 PCIe", 80, (9, 0), 2000, 756),
        ("NVIDIA A100-SXM4-40GB", 40, (8, 0), 1555, 312),
        ("NVIDIA A100 80GB PCIe", 80, (8, 0), 1935, 312),
        ("NVIDIA A100-PCIE-40GB", 40, (8, 0), 1555, 312),
        ("NVIDIA A100-SXM4-80GB", 80, (8, 0), 2039, 312),
        ("NVIDIA H100 80GB HBM3", 80, (9, 0), 3350, 989),
    ],
)
def test_auto_fills_the_variants_figures(gpu, board, memory_gib, capability, bandwidth, tflops) -> None:
    gpu(board, memory_gib=memory_gib, capability=capability)
    spec = detect_target(TargetConfig(kind="auto"))
    assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (bandwidth, tflops)


def test_an_h100_nvl_gets_no_sxm_roofline(gpu) -> None:
    gpu("NVIDIA H100 NVL", memory_gib=94)
    spec = detect_target(TargetConfig(kind="auto"))
    assert spec.name == "h100-nvl"
    assert spec.memory_bandwidth_gb_per_s is None and spec.peak_bf16_tflops is None


@pytest.mark.parametrize(
    ("preset", "memory_gib", "tdp", "fp8"),
    [("h100-pcie", 80, 350, True), ("a100-40gb", 40, 400, False), ("a100-pcie", 80, 300, False)],
)
def test_the_new_presets_validate(preset: str, memory_gib: float, tdp: float, fp8: bool) -> None:
    target = validated(compose_preset("target", preset, None).target)
    assert isinstance(target, TargetConfig)
    assert (target.kind, target.name) == ("cuda", preset)
    assert (target.memory_gib, target.tdp_watts, target.fp8) == (memory_gib, tdp, fp8)


def test_a_budget_above_the_device_is_capped_aloud(gpu, caplog: pytest.LogCaptureFixture) -> None:
    gpu("NVIDIA L4", memory_gib=22.5, capability=(8, 9))
    with caplog.at_level("WARNING", logger=target_module.__name__):
        spec = detect_target(TargetConfig(kind="cuda", memory_gib=80))
        detect_target(TargetConfig(kind="cuda", memory_gib=80))  # a run detects twice: said once
    assert spec.memory_bytes == int(22.5 * GIB)
    warnings = [r.getMessage() for r in caplog.records if "target.memory_gib" in r.getMessage()]
    assert len(warnings) == 1
    assert "target.memory_gib=80" in warnings[0] and "22.5 GiB" in warnings[0]
    assert "using 22.5 GiB" in warnings[0]


def test_a_budget_within_the_device_or_its_nominal_size_is_quiet(
    gpu, caplog: pytest.LogCaptureFixture
) -> None:
    """target=h100's 80 on an H100 whose NVML total is 79.6 GiB: the preset's nominal size."""
    gpu("NVIDIA H100 80GB HBM3", memory_gib=79.6)
    with caplog.at_level("WARNING", logger=target_module.__name__):
        detect_target(TargetConfig(kind="cuda", memory_gib=24))
        detect_target(TargetConfig(kind="cuda", memory_gib=80))
    assert not [r for r in caplog.records if "target.memory_gib" in r.getMessage()]


def test_an_empty_cuda_visible_devices_is_named(
    gpu, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpu("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level("WARNING", logger=target_module.__name__):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
    [message] = [r.getMessage() for r in caplog.records if "NVML sees" in r.getMessage()]
    assert "CUDA_VISIBLE_DEVICES" in message and "empty" in message
    with pytest.raises(UserError) as info:
        detect_target(TargetConfig(kind="cuda"))
    assert "CUDA_VISIBLE_DEVICES" in info.value.problem
    assert "CUDA_VISIBLE_DEVICES" in info.value.fix


def test_without_the_variable_the_message_is_as_before(
    gpu, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpu("NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level("WARNING", logger=target_module.__name__):
        detect_target(TargetConfig(kind="auto"))
    messages = [r.getMessage() for r in caplog.records if "NVML sees" in r.getMessage()]
    assert messages == ["NVML sees NVIDIA H100 80GB HBM3 but torch has no CUDA; targeting the CPU"]
