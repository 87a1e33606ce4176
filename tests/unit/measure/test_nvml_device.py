"""The NVML board behind a CUDA device: CUDA_VISIBLE_DEVICES renumbers devices, NVML does not.

`FakeNvml` is a host with four boards, each reading a different energy counter, so a test sees
which board a meter opened.
"""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.measure.energy import NvmlMeter
from optimizer.measure.nvml_device import nvml_handle

UUIDS = [f"GPU-{n}{n}{n}{n}aaaa-0000-0000-0000-00000000000{n}" for n in range(4)]


class FakeNvml:
    """Four boards; board n's energy counter reads n * 1000 mJ."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetCount(self) -> int:
        return len(UUIDS)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        if uuid not in UUIDS:
            raise self.NVMLError("Not Found")
        return UUIDS.index(uuid)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return UUIDS[handle]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return handle * 1000

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 100_000

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 40

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return 1500


def test_meter_opens_the_board_cuda_uses_not_nvml_index_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker given GPU 3 sees it as cuda:0; its meter must read board 3."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    meter = NvmlMeter([0], nvml=FakeNvml())
    assert meter.handles == [3]
    assert meter._energy_mj() == 3000


def test_meter_opens_the_board_by_the_uuid_cuda_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's UUID (no `GPU-` prefix) wins over the variable's order (CUDA may order by speed)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    asked: list[int] = []

    def cuda_uuid(index: int) -> str:
        asked.append(index)
        return UUIDS[2 if index == 0 else 1].removeprefix("GPU-")

    meter = NvmlMeter([0], nvml=FakeNvml(), cuda_uuid=cuda_uuid)
    assert asked == [0]
    assert meter.handles == [2]


@pytest.mark.parametrize(
    ("visible", "cuda_index", "board"),
    [
        ("2,3", 1, 3),  # NVML indices
        (f"{UUIDS[3]},{UUIDS[1]}", 1, 1),  # full UUIDs
        ("GPU-2222", 0, 2),  # a unique UUID prefix, as CUDA accepts
    ],
)
def test_handle_from_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str, cuda_index: int, board: int
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_handle(FakeNvml(), cuda_index) == board


def test_handle_without_the_variable_is_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_handle(FakeNvml(), 2) == 2


def test_a_cuda_uuid_unknown_to_nvml_or_an_index_beyond_the_list_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ValueError, match="not among CUDA_VISIBLE_DEVICES"):
        nvml_handle(FakeNvml(), 1)
    nvml: Any = FakeNvml()
    with pytest.raises(ValueError, match="no NVML device"):
        nvml_handle(nvml, 0, lambda _index: "ffffffff-0000-0000-0000-000000000000")
