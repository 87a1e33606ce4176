"""Target resolution leftovers: a user's preset of a packaged name keeps that preset's name and
kind; a packaged name left without a kind takes the preset's kind (detection and the named-preset
path agree); a CUDA_VISIBLE_DEVICES repeating a device hides every GPU; an NVML reading that fails
degrades detection (a warning, the board or the CPU), never a traceback."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from optimizer import target as target_module
from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.target import GIB, cuda_hides_every_gpu, detect_target
from optimizer.target_defaults import compose_for_target
from unit.test_target import fake_pynvml

LOGGER = target_module.__name__


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch):
    """NVML sees the named board; torch can use CUDA (unless told otherwise); warnings said afresh."""
    monkeypatch.setattr(target_module, "_WARNED", set())
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(
        name: str = "NVIDIA H100 80GB HBM3", torch_cuda: bool = True, **kwargs: object
    ) -> types.ModuleType:
        nvml = fake_pynvml(name=name, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: torch_cuda)
        return nvml

    return install


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "_detect_gpu", lambda index: None)


def _user_dir(tmp_path: Path, **presets: str) -> Path:
    (tmp_path / "target").mkdir()
    for name, text in presets.items():
        (tmp_path / "target" / f"{name}.yaml").write_text(text)
    return tmp_path


def _failing(nvml: types.ModuleType, *_args: object) -> object:
    raise nvml.NVMLError("Not Supported")


# item 1: a user's preset of a packaged name that leaves out kind and name


def test_a_users_preset_of_a_packaged_gpu_name_keeps_its_name_and_kind(board, tmp_path: Path) -> None:
    board()
    target = compose_for_target(["target=h100"], _user_dir(tmp_path, h100="fp8: false\n")).target
    assert (target.kind, target.name, target.fp8) == ("cuda", "h100", False)
    spec = detect_target(target)
    assert (spec.name, spec.fp8, spec.memory_bandwidth_gb_per_s) == ("h100", False, 3350)


def test_a_users_h100_preset_without_kind_is_refused_on_a_cpu_host(no_gpu, tmp_path: Path) -> None:
    """As the packaged target=h100 is: not a quiet CPU target."""
    target = compose_for_target(["target=h100"], _user_dir(tmp_path, h100="fp8: false\n")).target
    with pytest.raises(UserError, match="h100"):
        detect_target(target)


def test_a_users_cpu_preset_without_kind_stays_on_the_cpu(board, tmp_path: Path) -> None:
    board()  # a GPU the user's target=cpu must not take
    config_dir = _user_dir(tmp_path, cpu="cpu_active_watts_per_core: 7\n")
    target = compose_for_target(["target=cpu"], config_dir).target
    assert (target.kind, target.name, target.cpu_active_watts_per_core) == ("cpu", "cpu", 7)
    assert detect_target(target).kind == "cpu"


def test_an_override_of_the_name_or_kind_wins(board, tmp_path: Path) -> None:
    board()
    config_dir = _user_dir(tmp_path, h100="fp8: false\n")
    named = compose_for_target(["target=h100", "target.name=mine"], config_dir).target
    assert (named.kind, named.name) == ("cuda", "mine")  # the H100 preset's kind, the user's name
    kind = compose_for_target(["target=h100", "target.kind=cpu"], config_dir).target
    assert (kind.kind, kind.name) == ("cpu", "h100")


def test_a_users_own_preset_name_stays_detected(board, tmp_path: Path) -> None:
    """budget.yaml (no packaged namesake) without kind/name: target=auto with its settings."""
    board()
    target = compose_for_target(["target=budget"], _user_dir(tmp_path, budget="memory_gib: 20\n")).target
    assert (target.kind, target.name) == ("auto", "auto")
    assert detect_target(target).name == "h100"


# item 2: a packaged name without a kind


@pytest.mark.parametrize(
    ("name", "kind"), [("h100", "cuda"), ("l4", "cuda"), ("cpu", "cpu"), ("mine", "auto")]
)
def test_a_packaged_name_left_without_a_kind_takes_the_presets_kind(name: str, kind: str) -> None:
    assert TargetConfig(name=name).kind == kind


def test_name_h100_without_kind_is_the_named_preset_on_a_cpu_host(no_gpu, tmp_path: Path) -> None:
    target = compose_for_target(["target=named"], _user_dir(tmp_path, named="name: h100\n")).target
    assert (target.kind, target.name) == ("cuda", "h100")
    with pytest.raises(UserError, match="h100"):
        detect_target(target)


def test_a_cpu_only_energy_source_on_a_named_gpu_is_refused() -> None:
    with pytest.raises(UserError, match="energy_source"):
        TargetConfig(name="h100", energy_source="rapl")


def test_an_explicit_kind_is_kept() -> None:
    assert TargetConfig(kind="cpu", name="h100").kind == "cpu"


# item 3: a CUDA_VISIBLE_DEVICES that repeats a device


@pytest.mark.parametrize("value", ["0,0", "1,0,1", " 0 , 0 ", "GPU-0b6c,GPU-0b6c", "0,1gpu,1"])
def test_a_repeated_device_hides_every_gpu(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert "hides every GPU" in cuda_hides_every_gpu()


@pytest.mark.parametrize("value", ["0,1", "0,-1,0", "GPU-0b6c,0,0", "2"])
def test_a_repeat_after_the_list_ends_hides_nothing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """CUDA stops reading at the first entry that is no device (-1, or a number after UUIDs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert cuda_hides_every_gpu() == ""


def test_a_repeated_device_leaves_auto_on_the_cpu_and_names_it(
    board, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    board(torch_cuda=False, count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
    assert any("CUDA_VISIBLE_DEVICES=0,0" in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError) as info:
        detect_target(TargetConfig(kind="cuda"))
    assert "CUDA_VISIBLE_DEVICES=0,0" in info.value.problem and "once" in info.value.fix


# item 4: an NVML reading that fails


@pytest.mark.parametrize("reading", ["nvmlDeviceGetCudaComputeCapability", "nvmlDeviceGetMemoryInfo"])
def test_an_unreadable_essential_reading_targets_the_cpu_with_a_note(
    board, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reading: str
) -> None:
    nvml = board(torch_cuda=False)
    setattr(nvml, reading, lambda handle: _failing(nvml))
    monkeypatch.setattr(target_module, "_torch_readings", lambda index: None)  # no CUDA either
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
    notes = [r.getMessage() for r in caplog.records]
    assert any("NVIDIA H100 80GB HBM3" in n and "Not Supported" in n and "CPU" in n for n in notes), notes
    with pytest.raises(UserError):
        detect_target(TargetConfig(kind="cuda"))


def test_torch_stands_in_for_an_unreadable_capability(board, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MIG instance: NVML has no capability for it, CUDA (torch) has."""
    nvml = board()
    nvml.nvmlDeviceGetCudaComputeCapability = lambda handle: _failing(nvml)
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: _failing(nvml)
    monkeypatch.setattr(target_module, "_torch_readings", lambda index: (10 * GIB, (9, 0)))
    spec = detect_target(TargetConfig(kind="auto"))
    assert (spec.kind, spec.name, spec.fp8, spec.memory_bytes) == ("cuda", "h100", True, 10 * GIB)


@pytest.mark.parametrize("reading", ["nvmlDeviceGetName", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount"])
def test_other_unreadable_readings_never_raise(board, reading: str) -> None:
    nvml = board()
    setattr(nvml, reading, lambda *args: _failing(nvml))
    spec = detect_target(TargetConfig(kind="auto"))
    assert spec.kind in ("cuda", "cpu")
    assert nvml.calls[-1] == "shutdown"
