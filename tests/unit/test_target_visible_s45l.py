"""target=auto and a CUDA_VISIBLE_DEVICES entry that names no board (s45): `=5` on a one-GPU
host (or a UUID of no board here) left NVML unable to open the device and target=auto on the
CPU without a word, where the other ways the variable hides the GPUs say so. A fake pynvml."""

from __future__ import annotations

import sys
import types

import pytest

from optimizer import target as target_module
from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.target import detect_target
from unit.test_target import fake_pynvml

LOGGER = target_module.__name__


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """NVML sees one H100 (index 0 only, as the real one answers); torch could use CUDA."""
    nvml = fake_pynvml(count=1)

    def by_index(index: int) -> str:
        if index >= 1:
            raise nvml.NVMLError("Invalid Argument")
        return f"handle{index}"

    def by_uuid(uuid: str) -> str:
        raise nvml.NVMLError("Not Found")

    nvml.nvmlDeviceGetHandleByIndex = by_index
    nvml.nvmlDeviceGetHandleByUUID = by_uuid
    nvml.nvmlDeviceGetUUID = lambda handle: "GPU-11111111-2222-3333-4444-555555555555"
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)
    monkeypatch.setattr(target_module, "_WARNED", set())
    return nvml


@pytest.mark.parametrize("visible", ["5", "GPU-deadbeef"])
def test_auto_says_which_variable_left_it_on_the_cpu(
    one_gpu: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, visible: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and f"CUDA_VISIBLE_DEVICES={visible}" in notes[0] and "CPU" in notes[0], notes


def test_cuda_is_still_refused_after_the_note(
    one_gpu: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with caplog.at_level("WARNING", logger=LOGGER), pytest.raises(UserError, match="none is usable"):
        detect_target(TargetConfig(kind="cuda"))
    assert any("CUDA_VISIBLE_DEVICES=5" in r.getMessage() for r in caplog.records)


def test_a_visible_board_is_targeted_without_a_note(
    one_gpu: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level("WARNING", logger=LOGGER):
        assert detect_target(TargetConfig(kind="auto")).kind == "cuda"
    assert not [r for r in caplog.records if "CUDA_VISIBLE_DEVICES" in r.getMessage()]
