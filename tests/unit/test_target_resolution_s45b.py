"""target=auto on a detected board: the user's preset of the board (or, for a variant, of its
family) gives every capability it sets, the packaged preset what the device does not report, and
a CUDA_VISIBLE_DEVICES that selects no device is named like an empty one."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from optimizer import target as target_module
from optimizer.config import CONF_DIR, TargetConfig, compose_run_config
from optimizer.config.compose import compose_preset, validated
from optimizer.errors import UserError
from optimizer.target import TargetSpec, detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target import fake_pynvml

LOGGER = target_module.__name__


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch):
    """NVML sees the named board; torch can use CUDA (unless told otherwise); said afresh."""
    monkeypatch.setattr(target_module, "_WARNED", set())
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(name: str, torch_cuda: bool = True, **kwargs: object) -> types.ModuleType:
        nvml = fake_pynvml(name=name, **kwargs)  # type: ignore[arg-type]

        def by_uuid(uuid: str) -> str:
            raise nvml.NVMLError(f"no GPU {uuid}")

        nvml.nvmlDeviceGetHandleByUUID = by_uuid
        nvml.nvmlDeviceGetUUID = lambda handle: "GPU-0b6c1e2a"
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: torch_cuda)
        return nvml

    return install


def _user_dir(tmp_path: Path, **presets: str) -> Path:
    (tmp_path / "target").mkdir()
    for name, text in presets.items():
        (tmp_path / "target" / f"{name.replace('_', '-')}.yaml").write_text(text)
    return tmp_path


def _both_ways(overrides: list[str], config_dir: Path) -> list[TargetSpec]:
    """What the CLI's composition and a Python caller's (compose_run_config) detect."""
    return [
        detect_target(compose_for_target(overrides, config_dir=config_dir).target),
        detect_target(compose_run_config(overrides, config_dir).target),
    ]


# item 1: the preset's fields the device does not report


def test_a_board_whose_power_limit_nvml_cannot_read_takes_the_presets_tdp(board) -> None:
    nvml = board("NVIDIA H100 PCIe")

    def unsupported(handle: str) -> int:
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetEnforcedPowerLimit = unsupported
    spec = detect_target(TargetConfig(kind="auto"))
    assert (spec.name, spec.tdp_watts) == ("h100-pcie", 350)
    assert spec.gpu is not None and spec.gpu.power_limit_watts is None
    # an unknown board has no preset: no TDP, still a GPU target
    board("NVIDIA H100 NVL").nvmlDeviceGetEnforcedPowerLimit = unsupported
    assert detect_target(TargetConfig(kind="auto")).tdp_watts is None


def test_the_boards_own_power_limit_wins_over_the_datasheets(board) -> None:
    """An H100 capped at 500 W by its admin draws at most 500 W: the limit NVML reports stays."""
    board("NVIDIA H100 80GB HBM3", power_limit_mw=500_000)
    assert detect_target(TargetConfig(kind="auto")).tdp_watts == 500


USER_H100 = "kind: cuda\nname: h100\nfp8: false\ntdp_watts: 500\nbf16: false\n"


def test_auto_takes_every_capability_of_the_users_preset(board, tmp_path: Path) -> None:
    """fp8, bf16 and the TDP of the user's h100.yaml apply to target=auto as to target=h100."""
    board("NVIDIA H100 80GB HBM3")
    config_dir = _user_dir(tmp_path, h100=USER_H100)
    auto = _both_ways(["target=auto"], config_dir)
    for spec in [*auto, *_both_ways(["target=h100"], config_dir)]:
        assert (spec.fp8, spec.bf16, spec.tdp_watts) == (False, False, 500), spec.name
    for spec in auto:  # what the user's preset leaves out is the packaged h100's
        assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (3350, 989)


def test_an_override_still_wins_over_the_users_preset(board, tmp_path: Path) -> None:
    board("NVIDIA H100 80GB HBM3")
    config_dir = _user_dir(tmp_path, h100=USER_H100)
    overrides = ["target=auto", "target.fp8=true", "target.tdp_watts=600"]
    for spec in _both_ways(overrides, config_dir):
        assert (spec.fp8, spec.bf16, spec.tdp_watts) == (True, False, 600)


@pytest.mark.parametrize(
    ("preset", "capability"),
    [
        ("h200", (9, 0)),
        ("h100", (9, 0)),
        ("h100-pcie", (9, 0)),
        ("a100", (8, 0)),
        ("a100-40gb", (8, 0)),
        ("a100-pcie", (8, 0)),
        ("a100-pcie-40gb", (8, 0)),
        ("l40s", (8, 9)),
        ("l4", (8, 9)),
    ],
)
def test_the_packaged_presets_precisions_are_what_detection_reads(preset: str, capability) -> None:
    """Detection derives bf16/fp16/fp8 from the board's compute capability; every packaged preset
    says the same, so target=auto and target=<preset> search the same precisions."""
    packaged = validated(compose_preset("target", preset, None).target)
    assert isinstance(packaged, TargetConfig)
    assert (packaged.bf16, packaged.fp16, packaged.fp8) == (capability >= (8, 0), True, capability >= (8, 9))
    assert (CONF_DIR / "target" / f"{preset}.yaml").is_file()


# item 2: a CUDA_VISIBLE_DEVICES that selects no device


@pytest.mark.parametrize("value", ["-1", " -1 ", "-1,0", "NoDevFiles", "none"])
def test_a_cuda_visible_devices_selecting_no_device_is_named(
    board, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    board("NVIDIA H100 80GB HBM3", torch_cuda=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
        detect_target(TargetConfig(kind="auto"))  # a run detects twice: said once
    [message] = [r.getMessage() for r in caplog.records if "CUDA_VISIBLE_DEVICES" in r.getMessage()]
    assert f"CUDA_VISIBLE_DEVICES={value.strip()}" in message and "targeting the CPU" in message
    with pytest.raises(UserError) as info:
        detect_target(TargetConfig(kind="cuda"))
    assert f"CUDA_VISIBLE_DEVICES={value.strip()}" in info.value.problem
    assert "CUDA_VISIBLE_DEVICES" in info.value.fix


def test_minus_one_on_a_host_without_gpus_is_quiet(
    board, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    board("NVIDIA H100 80GB HBM3", torch_cuda=False, count=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
    assert not caplog.records


@pytest.mark.parametrize("value", ["0", "1", "GPU-0b6c1e2a", "0,1"])
def test_a_cuda_visible_devices_listing_a_gpu_is_not_named(
    board, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from optimizer.target import cuda_hides_every_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert cuda_hides_every_gpu() == ""


# item 3: the user's preset of the board's family


PCIE_FIGURES = "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 1900\ntdp_watts: 300\n"


def test_a_users_h100_preset_still_applies_to_an_h100_pcie(
    board, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    board("NVIDIA H100 PCIe", power_limit_mw=350_000)
    config_dir = _user_dir(tmp_path, h100=PCIE_FIGURES)
    with caplog.at_level("INFO", logger=LOGGER):
        specs = _both_ways(["target=auto"], config_dir)
    for spec in specs:
        assert spec.name == "h100-pcie"
        # the user's figures; what they leave out is the PCIe board's (756), not the SXM's (989)
        assert (spec.memory_bandwidth_gb_per_s, spec.tdp_watts, spec.peak_bf16_tflops) == (1900, 300, 756)
    notes = [r.getMessage() for r in caplog.records if "h100.yaml" in r.getMessage()]
    assert notes and "h100-pcie.yaml" in notes[0], notes


def test_the_users_preset_of_the_exact_variant_wins_over_its_family(board, tmp_path: Path) -> None:
    board("NVIDIA H100 PCIe", power_limit_mw=350_000)
    variant = "kind: cuda\nname: h100-pcie\nmemory_bandwidth_gb_per_s: 1800\n"
    config_dir = _user_dir(tmp_path, h100=PCIE_FIGURES, h100_pcie=variant)
    for spec in _both_ways(["target=auto"], config_dir):
        assert (spec.memory_bandwidth_gb_per_s, spec.tdp_watts) == (1800, 350)


def test_a_family_preset_reaches_a_board_without_a_packaged_one(board, tmp_path: Path) -> None:
    """An H100 NVL has no packaged figures, but the user's h100.yaml names its family."""
    board("NVIDIA H100 NVL", memory_gib=94)
    config_dir = _user_dir(tmp_path, h100=PCIE_FIGURES)
    for spec in _both_ways(["target=auto"], config_dir):
        assert (spec.name, spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == ("h100-nvl", 1900, None)


def test_another_familys_preset_is_not_taken(board, tmp_path: Path) -> None:
    """l4.yaml is no family of an L40S (nor h100.yaml of an H200, gh200 of anything)."""
    board("NVIDIA L40S", capability=(8, 9))
    config_dir = _user_dir(tmp_path, l4="kind: cuda\nname: l4\nmemory_bandwidth_gb_per_s: 1\n")
    for spec in _both_ways(["target=auto"], config_dir):
        assert spec.memory_bandwidth_gb_per_s == 864
