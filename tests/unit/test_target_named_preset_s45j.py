"""target=<name> with the user's own preset of a packaged GPU's name (--config-dir), which Hydra
reads instead of the packaged file: what it leaves unset comes from the packaged preset of that
name, as target=auto on that board takes it; what it sets stays."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from optimizer import target as target_module
from optimizer.target import TargetSpec, detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target import fake_pynvml

PARTIAL = "kind: cuda\nname: h100\nfp8: false\n"  # no bandwidth, FLOP/s nor TDP
FULL = (
    "kind: cuda\nname: h100\nmemory_gib: 80\nbf16: true\nfp16: true\nfp8: false\n"
    "tdp_watts: 350\nmemory_bandwidth_gb_per_s: 2000\npeak_bf16_tflops: 756\n"
)


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> object:
    """NVML sees an H100 and torch can use CUDA."""
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)
    return nvml


def _user_dir(tmp_path: Path, **presets: str) -> Path:
    (tmp_path / "target").mkdir()
    for name, text in presets.items():
        (tmp_path / "target" / f"{name}.yaml").write_text(text)
    return tmp_path


def _detected(overrides: list[str], config_dir: Path) -> TargetSpec:
    return detect_target(compose_for_target(overrides, config_dir=config_dir).target)


def _figures(spec: TargetSpec) -> tuple[object, ...]:
    return (spec.memory_bandwidth_gb_per_s, spec.peak_bf16_tflops, spec.tdp_watts, spec.fp8)


@pytest.mark.usefixtures("h100")
def test_a_named_preset_takes_what_it_leaves_out_from_the_packaged_one(tmp_path: Path) -> None:
    config_dir = _user_dir(tmp_path, h100=PARTIAL)
    named = _detected(["target=h100"], config_dir)
    assert _figures(named) == (3350, 989, 700, False)
    assert _figures(named) == _figures(_detected(["target=auto"], config_dir))


def test_a_named_presets_tdp_falls_back_to_the_packaged_one(h100: object, tmp_path: Path) -> None:
    """NVML cannot read the power limit: the packaged TDP, as target=auto takes it."""

    def unsupported(handle: str) -> int:
        raise h100.NVMLError("Not Supported")  # type: ignore[attr-defined]

    h100.nvmlDeviceGetEnforcedPowerLimit = unsupported  # type: ignore[attr-defined]
    assert _detected(["target=h100"], _user_dir(tmp_path, h100=PARTIAL)).tdp_watts == 700


@pytest.mark.usefixtures("h100")
def test_a_fully_specified_named_preset_is_unchanged(tmp_path: Path) -> None:
    named = _detected(["target=h100"], _user_dir(tmp_path, h100=FULL))
    assert _figures(named) == (2000, 756, 350, False)


@pytest.mark.usefixtures("h100")
def test_a_preset_without_a_packaged_namesake_is_left_as_it_is(tmp_path: Path) -> None:
    mine = "kind: cuda\nname: mygpu\n"
    named = _detected(["target=mygpu"], _user_dir(tmp_path, mygpu=mine))
    assert (named.name, named.memory_bandwidth_gb_per_s, named.peak_bf16_tflops) == ("mygpu", None, None)
