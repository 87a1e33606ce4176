"""Which NVML board a CUDA device is.

CUDA numbers the devices a process sees after `CUDA_VISIBLE_DEVICES` (a worker given GPU 3 sees it
as `cuda:0`); NVML numbers every board on the host and ignores the variable. Opening the NVML
handle by the CUDA index would meter the wrong board, so the handle is opened by the device's UUID
(from torch, when CUDA is up), else by the variable's entry for that index. Also how a board's
power is read, polled through a window and integrated (the meter's cross-check, and its reading
without an energy counter).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

UUID_PREFIXES = ("GPU-", "MIG-")


def cuda_visible_devices() -> list[str]:
    """The GPU ids listed in CUDA_VISIBLE_DEVICES (empty when it is unset)."""
    return [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]


def cuda_hides_every_gpu() -> str:
    """A note for messages where CUDA_VISIBLE_DEVICES selects no device ('' where it does, or is
    unset): set but empty, a first entry CUDA reads as none (-1, NoDevFiles: CUDA stops at the
    first entry that is neither a number nor a GPU-/MIG- UUID), or a device listed twice."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return ""
    value = value.strip()
    if not value:
        return " (CUDA_VISIBLE_DEVICES is set but empty: it hides every GPU)"
    repeated = _repeated_device(value)
    if repeated is not None:
        return f" (CUDA_VISIBLE_DEVICES={value} lists device {repeated} twice: it hides every GPU)"
    first = value.split(",")[0].strip()
    if first.startswith(UUID_PREFIXES) or re.match(r"\+?\d", first):
        return ""
    return f" (CUDA_VISIBLE_DEVICES={value} selects no device: it hides every GPU)"


def _repeated_device(value: str) -> str | None:
    """The first device CUDA_VISIBLE_DEVICES lists twice before its list ends, which makes CUDA
    see none (as torch.cuda._parse_visible_devices reads it): UUIDs compared as written, up to the
    first entry without the first one's prefix; ordinals by their leading number (`1gpu` is 1),
    up to the first entry that is none (-1, a word)."""
    prefix = next((p for p in UUID_PREFIXES if value.startswith(p)), None)
    seen: list[str] = []
    for entry in value.split(","):
        device = entry if prefix else _leading_ordinal(entry)
        if device is None or (prefix and not entry.startswith(prefix)):
            return None
        if device in seen:
            return device
        seen.append(device)
    return None


def _leading_ordinal(entry: str) -> str | None:
    """The device number an entry starts with, as CUDA's strtoul reads it; None for none or < 0."""
    match = re.match(r"[+-]?\d+", entry.strip())
    if match is None or int(match.group()) < 0:
        return None
    return str(int(match.group()))


def torch_cuda_uuid(cuda_index: int) -> str | None:
    """The UUID torch reports for `cuda:<index>` (no `GPU-` prefix); None without CUDA."""
    import torch  # only when a GPU is metered

    if not torch.cuda.is_available() or cuda_index >= torch.cuda.device_count():
        return None
    uuid = getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None)
    return str(uuid) if uuid else None


def nvml_handle(nvml: Any, cuda_index: int, cuda_uuid: Callable[[int], str | None] | None = None) -> Any:
    """The NVML handle of the board this process uses as `cuda:<cuda_index>`.

    `cuda_uuid` gives the device's UUID as CUDA reports it (torch_cuda_uuid); without one, or when
    it has none, the CUDA_VISIBLE_DEVICES entry for the index names the board: a UUID (full or a
    unique prefix, as CUDA accepts) or an NVML index (CUDA's order is NVML's PCI-bus order under
    CUDA_DEVICE_ORDER=PCI_BUS_ID, and on hosts with one GPU model).
    """
    uuid = cuda_uuid(cuda_index) if cuda_uuid is not None else None
    if uuid:
        names = [uuid] if uuid.startswith(UUID_PREFIXES) else [p + uuid for p in UUID_PREFIXES]
        return _by_uuid(nvml, names)
    visible = cuda_visible_devices()
    if not visible:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
    if cuda_index >= len(visible):
        raise ValueError(
            f"cuda:{cuda_index} is not among CUDA_VISIBLE_DEVICES={','.join(visible)} "
            f"({len(visible)} visible device(s))"
        )
    entry = visible[cuda_index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    return _by_uuid(nvml, [entry])


def _by_uuid(nvml: Any, names: list[str]) -> Any:
    """The handle whose UUID is one of `names`; a name may be a unique prefix of the UUID."""
    for name in names:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(name)
        except nvml.NVMLError:
            continue
    matches = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        if any(uuid.startswith(name) for name in names):
            matches.append(handle)
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        raise ValueError(f"{found} NVML device(s) match the CUDA device {' or '.join(names)}")
    return matches[0]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def boards_power_mw(nvml: Any, handles: list[Any], instant: bool) -> tuple[int, bool]:
    """The boards' power in milliwatts, and whether to ask for the instantaneous field next time.
    Instantaneous where NVML has the field (`instant` until it failed once): nvmlDeviceGetPowerUsage
    is a 1 s average on recent GPUs and lags a window's start (read 18% low over 2.5 s on an H200)."""
    field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
    milliwatts = 0
    for handle in handles:
        if field is not None and instant:
            try:
                value = nvml.nvmlDeviceGetFieldValues(handle, [field])[0]
                if value.nvmlReturn == 0:
                    milliwatts += int(value.value.uiVal)
                    continue
            except nvml.NVMLError:
                pass
            instant = False
        milliwatts += int(nvml.nvmlDeviceGetPowerUsage(handle))
    return milliwatts, instant


def integrate_power(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Trapezoid integral (joules) of (time, watts) samples, clipped to [start, end]."""
    inside = [(t, w) for t, w in samples if start <= t <= end]
    if len(inside) < 2:
        return None
    joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(inside, inside[1:], strict=False))
    # extend the first and last readings to the window's edges
    joules += (inside[0][0] - start) * inside[0][1] + (end - inside[-1][0]) * inside[-1][1]
    return joules


class PowerPoll:
    """Board power read through one window: once at its start, before the thread that reads it
    every `poll_seconds` after (a thread first scheduled after a short window closed left it one
    reading, no integral: 0 J on a meter without an energy counter), and once more at its end
    (`sample(at=end)`).

    A read can fail (NVML answers Unknown Error under load, transiently): it is skipped and the
    next one covers the gap, as RAPL's poll does, so the thread never dies and leaves the window
    integrated from its first readings; a window whose reads failed says how long it went unread."""

    def __init__(self, read: Callable[[], float], clock: Callable[[], float], poll_seconds: float) -> None:
        self._read, self._clock, self.poll_seconds = read, clock, poll_seconds
        self.samples: list[tuple[float, float]] = []  # (time, watts)
        self.reads = 0
        self.failed = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PowerPoll:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()  # also when the window's body raised: no thread outlives its window
        self._thread.join()

    def sample(self, at: float | None = None) -> None:
        """One reading, timed `at` (default: now); a failure is counted, never raised."""
        at = self._clock() if at is None else at
        self.reads += 1
        try:
            self.samples.append((at, self._read()))
        # any error: a poll thread that dies leaves the window integrated from its first readings
        except Exception as exc:
            self.failed += 1
            if not self.error:
                log.warning("reading NVML power failed, polling on: %s", exc)
            self.error = f"{type(exc).__name__}: {exc}"

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):  # the window's start was read in __enter__
            self.sample()

    def joules(self, start: float, end: float, required: bool) -> float | None:
        """The readings integrated over [start, end]; None with too few of them, which raises when
        they are `required` (a meter without an energy counter has no other figure: never 0 J)."""
        joules = integrate_power(self.samples, start, end)
        if joules is None and required:
            read = sum(start <= t <= end for t, _ in self.samples)
            why = self._failures() if self.failed else f"{read} NVML power reading(s) in the window"
            raise RuntimeError(f"{why}: too few readings for the window's energy")
        return joules

    def warning(self, start: float, end: float) -> str | None:
        """How long a window whose reads failed went unread; None when none failed."""
        if not self.failed:
            return None
        times = [start, *(t for t, _ in self.samples if start <= t <= end), end]
        gap = max(later - earlier for earlier, later in zip(times, times[1:], strict=False))
        return f"{self._failures()}: {gap:.2f} s went unread, integrated from the readings either side"

    def _failures(self) -> str:
        return f"NVML power could not be read at {self.failed} of {self.reads} reads ({self.error})"


def board_state(nvml: Any, handle: Any) -> tuple[float | None, float | None]:
    """The board's temperature (C) and SM clock (MHz) after a window; None where a read failed: a
    transient NVML error must not fail a window whose energy was read."""
    readings: list[float | None] = []
    for read in (
        lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
    ):
        try:
            readings.append(float(read()))
        except nvml.NVMLError as exc:
            log.warning("reading the GPU's temperature or clock failed: %s", exc)
            readings.append(None)
    return readings[0], readings[1]
