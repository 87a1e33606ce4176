"""target=auto on a GPU with the user's own preset of its name (--config-dir): the user's
bandwidth and FLOP/s win over the packaged preset's, as they do for target=<name>."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from optimizer import target as target_module
from optimizer.target import TargetSpec, detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target import fake_pynvml

# an H100 PCIe: less bandwidth and FLOP/s than the packaged (SXM) h100.yaml's 3350 and 989
PCIE = "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 2000\npeak_bf16_tflops: 756\n"


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML sees an H100 and torch can use CUDA."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)


def _user_dir(tmp_path: Path, **presets: str) -> Path:
    (tmp_path / "target").mkdir()
    for name, text in presets.items():
        (tmp_path / "target" / f"{name}.yaml").write_text(text)
    return tmp_path


def _detected(overrides: list[str], config_dir: Path | None) -> TargetSpec:
    """What the run measures with: the target its composed config detects."""
    return detect_target(compose_for_target(overrides, config_dir=config_dir).target)


@pytest.mark.usefixtures("h100")
def test_auto_takes_the_users_preset_of_the_gpus_name(tmp_path: Path) -> None:
    spec = _detected(["target=auto"], _user_dir(tmp_path, h100=PCIE))
    assert spec.name == "h100"
    assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (2000, 756)
    # the same figures as naming the preset
    named = _detected(["target=h100"], tmp_path)
    assert (named.memory_bandwidth_gb_per_s, named.peak_bf16_tflops) == (2000, 756)


@pytest.mark.usefixtures("h100")
def test_what_the_users_preset_leaves_out_comes_from_the_packaged_one(tmp_path: Path) -> None:
    spec = _detected(
        [], _user_dir(tmp_path, h100="kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 2000\n")
    )
    assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (2000, 989)


@pytest.mark.usefixtures("h100")
def test_an_override_still_wins_over_the_users_preset(tmp_path: Path) -> None:
    overrides = ["target=auto", "target.peak_bf16_tflops=500"]
    spec = _detected(overrides, _user_dir(tmp_path, h100=PCIE))
    assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (2000, 500)


@pytest.mark.usefixtures("h100")
def test_without_a_user_preset_of_that_name_the_packaged_one_fills(tmp_path: Path) -> None:
    l4 = "kind: cuda\nname: l4\nmemory_bandwidth_gb_per_s: 1\npeak_bf16_tflops: 1\n"
    for config_dir in (_user_dir(tmp_path, l4=l4), None):
        spec = _detected(["target=auto"], config_dir)
        assert (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops) == (3350, 989)


def test_a_cpu_host_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "_detect_gpu", lambda index: None)
    cfg = compose_for_target(["target=auto"], config_dir=_user_dir(tmp_path, h100=PCIE))
    assert cfg.target.memory_bandwidth_gb_per_s is None and cfg.target.peak_bf16_tflops is None
    assert detect_target(cfg.target).kind == "cpu"
