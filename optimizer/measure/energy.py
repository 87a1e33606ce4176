"""Energy meters and measurement windows.

Sources, best first: NVML's total-energy counter (NVIDIA GPUs, Volta+), Linux RAPL
(/sys/class/powercap), and only then an *estimate* from process CPU time. Every Measurement
carries its `source`; an estimate is never reported as a measurement.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.host_cpu import read_or_empty
from optimizer.measure.cpu_time import cpu_times, own_cpu_seconds, shared_cpu_warnings, wait_for_quiet_cpu
from optimizer.measure.nvml_device import (
    PowerPoll,
    board_state,
    boards_power_mw,
    nvml_handle,
    torch_cuda_uuid,
)
from optimizer.measure.rapl_poll import CounterPoll
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
NVML_UPDATE_SECONDS = 0.1  # the counter advances about every 100 ms
NVML_MIN_PERIODS = 20  # windows shorter than 20 counter periods are flagged
NVML_STUCK_SECONDS = 1.0  # ten periods unchanged while the board draws power: it is not counting
# RAPL counters wrap at max_energy_range_uj: AMD's 32 bits of 15.3 uJ (65.7 kJ) every 219 s at 300 W,
# so a longer window is read in steps; 10 s steps stay within one wrap up to 6.5 kW a package.
RAPL_POLL_SECONDS = 10.0
Attempt = TypeVar("Attempt")


@dataclass
class Measurement:
    """Energy over one window. Units: joules, seconds, watts. Filled in when the window closes."""

    source: str
    joules: float = 0.0
    seconds: float = 0.0
    idle_watts: float = 0.0
    # NVML only: energy integrated from polled power over the same window, as a cross-check.
    polled_joules: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    warnings: list[str] = field(default_factory=list)
    # What took CPU time from the candidate during the window (the hypervisor, other processes;
    # also in `warnings`): its figures are not this machine's own, so it may be measured again.
    shared_cpu: list[str] = field(default_factory=list)

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    @property
    def active_joules(self) -> float:
        """Energy above the idle baseline measured before the search."""
        return max(self.joules - self.idle_watts * self.seconds, 0.0)

    @property
    def is_estimate(self) -> bool:
        return self.source == "estimate"


class EnergyMeter(Protocol):
    source: str
    idle_watts: float

    def window(self) -> Any:
        """A context manager yielding a Measurement that is complete once the block exits."""
        ...


class EstimateMeter:
    """Labelled estimate: CPU seconds of this process, its finished children and the tracked live
    processes (a layout's ranks) x active watts/core + wall x cores x idle watts/core."""

    source = "estimate"

    def __init__(self, cores: int, active_watts_per_core: float, idle_watts_per_core: float) -> None:
        self.cores = cores
        self.active_watts_per_core = active_watts_per_core
        self.static_watts = cores * idle_watts_per_core
        self.idle_watts = self.static_watts

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        measurement = Measurement(source=self.source, idle_watts=self.idle_watts)
        cpu0, wall0, times0 = own_cpu_seconds(), time.perf_counter(), cpu_times()
        yield measurement
        cpu, wall = own_cpu_seconds() - cpu0, time.perf_counter() - wall0
        measurement.seconds = wall
        measurement.joules = cpu * self.active_watts_per_core + wall * self.static_watts
        _flag_shared_cpu(measurement, shared_cpu_warnings(times0, cpu_times(), cpu))


def _flag_shared_cpu(measurement: Measurement, warnings: list[str]) -> None:
    """Keep a CPU window's shared-CPU warnings with it, and log them as they happen."""
    measurement.warnings.extend(warnings)
    measurement.shared_cpu.extend(warnings)
    for warning in warnings:
        log.warning("%s", warning)


def undisturbed(
    attempt: Callable[[], Attempt],
    measurement_of: Callable[[Attempt], Measurement],
    retries: int,
) -> tuple[Attempt, list[str]]:
    """`attempt()` (one energy window), again while its window's CPU time was taken by the
    hypervisor or other processes (`Measurement.shared_cpu`), at most `retries` more times, each
    after `wait_for_quiet_cpu`. Returns the attempt kept and, for its window's warnings, a note on
    each attempt it replaced."""
    notes: list[str] = []
    while True:
        result = attempt()
        shared = measurement_of(result).shared_cpu
        if not shared or len(notes) >= retries:
            return result, notes
        notes.append(f"measured again after a window in which {shared[0]}")
        rapl = measurement_of(result).source == RaplMeter.source  # its figure holds the whole host's work
        waited = wait_for_quiet_cpu(package_energy=True) if rapl else wait_for_quiet_cpu()
        quiet = f"quiet after {waited:.1f} s" if waited is not None else "still busy after the wait"
        log.info("measuring the window again, the CPU %s (workload.disturbed_retries=%d)", quiet, retries)


def estimate_coefficients(target: TargetSpec | TargetConfig) -> dict[str, float]:
    """The estimate's watts per core, recorded with everything it produced (store context, recipe)."""
    return {
        "cpu_active_watts_per_core": float(target.cpu_active_watts_per_core),
        "cpu_idle_watts_per_core": float(target.cpu_idle_watts_per_core),
    }


class RaplMeter:
    """Package energy from Linux powercap (intel-rapl, also used by AMD). Units read: microjoules."""

    source = "rapl"

    def __init__(self, domains: list[Path], poll_seconds: float = RAPL_POLL_SECONDS) -> None:
        self.domains = domains
        self.idle_watts = 0.0
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        self.poll_seconds = poll_seconds

    @staticmethod
    def package_domains() -> list[Path]:
        """Top-level package domains that this process may read (often root-only). Not `psys`: on
        Intel client CPUs that top-level zone is the whole platform, the packages included, and
        adding it would count their energy twice."""
        if not POWERCAP.is_dir():
            return []
        readable = []
        for domain in sorted(POWERCAP.glob("intel-rapl:*")):
            if domain.name.count(":") != 1:  # sub-domains (core, uncore, dram) are inside packages
                continue
            if read_or_empty(domain / "name").strip() == "psys":
                continue
            try:
                int((domain / "energy_uj").read_text())
                readable.append(domain)
            except (OSError, ValueError):
                continue
        return readable

    def _read(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        measurement = Measurement(source=self.source, idle_watts=self.idle_watts)
        counters = CounterPoll(self._read, self.ranges, self.poll_seconds)
        wall0, times0, cpu0 = time.perf_counter(), cpu_times(), own_cpu_seconds()
        with counters:
            yield measurement
        measurement.joules = counters.finish() / 1e6
        measurement.seconds = time.perf_counter() - wall0
        unread = counters.warning(measurement.seconds)
        if unread:
            measurement.warnings.append(unread)
            log.warning("%s", unread)
        times, cpu = cpu_times(), own_cpu_seconds() - cpu0
        _flag_shared_cpu(measurement, shared_cpu_warnings(times0, times, cpu, package_energy=True))


class NvmlMeter:
    """NVML total-energy counter (millijoules) summed over the candidate's GPUs.

    CUDA is synchronized at both window edges so queued kernels land inside their window. A
    background thread polls power (milliwatts) over the same window as a cross-check; on GPUs
    without the energy counter (pre-Volta) the polled integral becomes the reading, with source
    `nvml-power-poll`. Windows shorter than 20 counter periods are flagged.

    `indices` are CUDA device indices as this process sees them; each is metered on its own board
    (opened by UUID, never by NVML index: CUDA_VISIBLE_DEVICES renumbers the devices, see
    nvml_device.py). `nvml`, `clock` and `cuda_uuid` (index -> the device's UUID, torch's by
    default with the real NVML) are injectable so that tests can replay a recorded trace.
    """

    def __init__(
        self,
        indices: list[int],
        poll_seconds: float = 0.05,
        nvml: Any = None,
        clock: Callable[[], float] = time.perf_counter,
        cuda_uuid: Callable[[int], str | None] | None = None,
        pci_bus_ids: list[str] | None = None,
    ) -> None:
        if nvml is None:
            import pynvml  # nvidia-ml-py; imported only when a GPU is measured

            nvml = pynvml
            cuda_uuid = cuda_uuid or torch_cuda_uuid
        self._nvml = nvml
        nvml.nvmlInit()
        if pci_bus_ids:
            # boards named by the CUDA devices other processes use: NVML's order may differ from
            # CUDA's, and those devices' CUDA work is synchronized by their own processes
            self.handles = [nvml.nvmlDeviceGetHandleByPciBusId(bus) for bus in pci_bus_ids]
            indices = []
        else:
            self.handles = [nvml_handle(nvml, i, cuda_uuid) for i in indices]
        self.indices = indices
        self.pci_bus_ids = pci_bus_ids or []
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.idle_watts = 0.0
        self._instant_ok = True
        self.has_counter = self._probe_counter()
        self.source = "nvml" if self.has_counter else "nvml-power-poll"

    def on_boards(self, pci_bus_ids: list[str]) -> NvmlMeter:
        """A meter over these boards (PCI bus ids), same NVML and clock; its idle baseline is this
        meter's per board times the boards (idle was measured on this meter's boards)."""
        meter = NvmlMeter([], self.poll_seconds, self._nvml, self.clock, pci_bus_ids=pci_bus_ids)
        meter.idle_watts = self.idle_watts / max(len(self.handles), 1) * len(pci_bus_ids)
        return meter

    def _probe_counter(self) -> bool:
        try:
            self._energy_mj()
        except self._nvml.NVMLError:
            log.warning("this GPU has no NVML energy counter: integrating polled power instead")
            return False
        return True

    def _energy_mj(self) -> int:
        return sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)

    def _power_watts(self) -> float:
        milliwatts, self._instant_ok = boards_power_mw(self._nvml, self.handles, self._instant_ok)
        return milliwatts / 1000.0

    def _drop_counter(self, measurement: Measurement, advanced_mj: int) -> None:
        """A counter that did not advance (or went back: a driver reload) while the board drew power
        would read <= 0 J in every window: polled power from now on (the idle window finds it first)."""
        self.has_counter = False
        self.source = measurement.source = "nvml-power-poll"
        measurement.joules = measurement.polled_joules or 0.0
        measurement.warnings.append(
            f"the NVML energy counter advanced {advanced_mj} mJ in {measurement.seconds:.1f} s at "
            f"{measurement.watts:.0f} W polled: integrating polled power instead (nvml-power-poll)"
        )
        log.warning("%s", measurement.warnings[-1])

    def _sync(self) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for index in self.indices:
                torch.cuda.synchronize(index)

    def stream_window(self) -> AbstractContextManager[Measurement]:
        """A window over a request stream: opened and closed while an engine's own thread runs,
        which may be capturing a CUDA graph (continuous batching captures one per new shape) and a
        device-wide synchronize from here would break that capture. So no synchronize at its
        edges: the stream's requests are timed by their own completions."""
        return self.window(sync=False)

    @contextmanager
    def window(self, sync: bool = True) -> Iterator[Measurement]:
        measurement = Measurement(source=self.source, idle_watts=self.idle_watts)
        power = PowerPoll(self._power_watts, self.clock, self.poll_seconds)
        if sync:
            self._sync()
        start_mj = self._energy_mj() if self.has_counter else 0
        t0 = self.clock()
        with power:  # a window that raises (a candidate's timeout, an OOM) stops its poller too
            yield measurement
            if sync:
                self._sync()
            end_mj = self._energy_mj() if self.has_counter else 0
            t1 = self.clock()
        power.sample(at=t1)
        measurement.seconds = t1 - t0
        measurement.polled_joules = power.joules(t0, t1, required=not self.has_counter)
        measurement.joules = (
            (end_mj - start_mj) / 1000.0 if self.has_counter else measurement.polled_joules or 0.0
        )
        stuck = measurement.seconds >= NVML_STUCK_SECONDS and end_mj <= start_mj
        if self.has_counter and stuck and measurement.polled_joules:
            self._drop_counter(measurement, end_mj - start_mj)
        measurement.temperature_c, measurement.sm_clock_mhz = board_state(self._nvml, self.handles[0])
        if unread := power.warning(t0, t1):
            measurement.warnings.append(unread)
            log.warning("%s", unread)
        if measurement.seconds < NVML_MIN_PERIODS * NVML_UPDATE_SECONDS:
            measurement.warnings.append(
                f"window {measurement.seconds:.2f} s < {NVML_MIN_PERIODS} NVML counter periods: error may be tens of %"
            )


def make_meter(target: TargetSpec) -> EnergyMeter:
    """The best energy source available for the target, honouring `target.energy_source`."""
    wanted = target.energy_source
    if target.is_cuda:
        assert target.gpu is not None  # a CUDA target is one NVML detected: NVML can meter it
        if wanted in ("rapl", "estimate"):  # (target=auto resolves to the GPU only here)
            raise UserError(
                "target.energy_source",
                f"is {wanted}, which meters the CPU alone, but the target is the GPU {target.gpu.name}: "
                "its energy would not be counted",
                "use target.energy_source=auto or nvml to measure the GPU, or target=cpu to optimize for the CPU",
            )
        return NvmlMeter([target.gpu.index])
    if wanted == "nvml":
        raise UserError(
            "target.energy_source", "nvml needs an NVIDIA GPU target", "use auto, rapl or estimate"
        )
    if wanted in ("auto", "rapl"):
        domains = RaplMeter.package_domains()
        if domains:
            return RaplMeter(domains)
        if wanted == "rapl":
            raise UserError(
                "target.energy_source",
                "RAPL is not readable here (/sys/class/powercap missing or root-only)",
                "run as a user who can read energy_uj, or use target.energy_source=estimate",
            )
    why = "asked for by target.energy_source" if wanted == "estimate" else "no energy counter here"
    log.warning("%s: energy is an ESTIMATE from CPU time (labelled 'estimate')", why)
    return EstimateMeter(target.cores, target.cpu_active_watts_per_core, target.cpu_idle_watts_per_core)


def meter_for_engine(meter: EnergyMeter, engine: object) -> EnergyMeter:
    """The meter of everything an engine uses: on GPUs every board its processes run on (an
    engine that names them by `pci_bus_ids`); otherwise the meter as it is (the CPU estimate
    counts a layout's tracked processes, RAPL the whole package)."""
    boards = list(getattr(engine, "pci_bus_ids", None) or [])
    if isinstance(meter, NvmlMeter) and boards:
        return meter.on_boards(boards)
    return meter


def measure_idle_watts(meter: EnergyMeter, seconds: float, disturbed_retries: int = 0) -> float:
    """Average power while this process sleeps; becomes the meter's idle baseline. A window in which
    other processes or the hypervisor took the CPU is measured again up to `disturbed_retries`
    times (RAPL counts their energy as idle; the estimate's idle figure is its coefficients alone,
    so it is never measured again)."""
    if seconds <= 0:
        return meter.idle_watts

    def window() -> Measurement:
        with meter.window() as measurement:
            time.sleep(seconds)
        return measurement

    retries = 0 if meter.source == "estimate" else disturbed_retries
    measurement, _ = undisturbed(window, lambda kept: kept, retries)
    meter.idle_watts = measurement.watts
    return meter.idle_watts
