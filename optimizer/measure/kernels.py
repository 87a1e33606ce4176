"""Where a decode step's time goes: device kernel time per kernel and per category.

`profile_steps` runs a step under `torch.profiler` and sums, per kernel name, the durations that
CUPTI reports (on CUDA) or the host durations of the outermost aten ops (on the CPU). Busy time is
the sum of those durations; the rest of the wall-clock time is host gaps: Python, dispatch and
launch overhead that leaves the device idle. Each kernel name is sorted into a category
(kernel_categories.py) so that the table answers "is this step GEMM-bound, attention-bound or
launch-bound?".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optimizer.measure.kernel_categories import categorize

if TYPE_CHECKING:
    import torch

HOST_GAPS = "host gaps"
# Stands in for every category when the profiler saw no kernels: nothing is known about the split.
UNATTRIBUTED = "unattributed"


@dataclass(frozen=True)
class KernelRow:
    """One kernel (or, on the CPU, one outermost aten op) summed over all profiled steps."""

    name: str
    category: str
    calls: int
    total_us: float


@dataclass(frozen=True)
class KernelProfile:
    """Kernel time of `steps` profiled steps, per step. Units: milliseconds (ms) per step.

    `wall_ms_per_step` is timed under the profiler, so it includes the profiler's own host
    overhead; `unprofiled_wall_ms_per_step` is the same number of steps without it.
    """

    steps: int
    wall_ms_per_step: float
    busy_ms_per_step: float
    rows: list[KernelRow]
    source: str = "cuda kernels"  # or "cpu ops": the outermost aten ops, timed on the host
    unprofiled_wall_ms_per_step: float | None = None
    note: str = ""  # why the table may mislead, e.g. no kernels reported inside CUDA-graph replays

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def by_time(self) -> list[KernelRow]:
        """The rows, most total time first."""
        return sorted(self.rows, key=lambda row: row.total_us, reverse=True)

    @property
    def kernels_reported(self) -> bool:
        return bool(self.rows)

    @property
    def host_gap_ms_per_step(self) -> float:
        """Wall time with no kernel running (clamped at 0: busy can exceed wall by timer jitter)."""
        return max(0.0, self.wall_ms_per_step - self.busy_ms_per_step)

    def by_category(self) -> dict[str, float]:
        """Milliseconds per step by category, largest first, then host gaps.

        With no kernels reported the split is unknown: one "unattributed" entry holds the wall time.
        """
        if not self.rows:
            return {UNATTRIBUTED: self.wall_ms_per_step}
        totals: dict[str, float] = {}
        for row in self.rows:
            totals[row.category] = totals.get(row.category, 0.0) + row.total_us / 1000 / self.steps
        ordered = dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))
        ordered[HOST_GAPS] = self.host_gap_ms_per_step
        return ordered

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "source": self.source,
            "wall_ms_per_step": self.wall_ms_per_step,
            "unprofiled_wall_ms_per_step": self.unprofiled_wall_ms_per_step,
            "busy_ms_per_step": self.busy_ms_per_step,
            "host_gap_ms_per_step": self.host_gap_ms_per_step,
            "kernels_reported": self.kernels_reported,
            "note": self.note,
            "by_category_ms_per_step": self.by_category(),
            "rows": [
                {
                    "name": row.name,
                    "category": row.category,
                    "calls": row.calls,
                    "total_us": row.total_us,
                    "calls_per_step": row.calls / self.steps,
                    "ms_per_step": row.total_us / 1000 / self.steps,
                }
                for row in self.by_time()
            ],
        }

    def markdown(self, top: int = 15) -> str:
        """A table by category (ms/step, % of wall), then the `top` kernels by time."""
        wall = self.wall_ms_per_step
        lines = [
            f"Kernel time per step over {self.steps} steps ({self.source}): wall {wall:.3f} ms, "
            f"busy {self.busy_ms_per_step:.3f} ms, host gaps {self.host_gap_ms_per_step:.3f} ms."
        ]
        if self.unprofiled_wall_ms_per_step is not None:
            lines[0] += f" Without the profiler: wall {self.unprofiled_wall_ms_per_step:.3f} ms."
        if self.note:
            lines += ["", f"Note: {self.note}"]
        lines += ["", "| category | ms/step | % of wall |", "|---|---:|---:|"]
        for category, ms in self.by_category().items():
            lines.append(f"| {category} | {ms:.3f} | {_percent(ms, wall)} |")
        if not self.rows:
            return "\n".join(lines)
        lines += [
            "",
            "| kernel | category | calls/step | us/call | ms/step |",
            "|---|---|---:|---:|---:|",
        ]
        for row in self.by_time()[:top]:
            lines.append(
                f"| {_short(row.name)} | {row.category} | {row.calls / self.steps:.2f} | "
                f"{row.total_us / row.calls:.1f} | {row.total_us / 1000 / self.steps:.3f} |"
            )
        return "\n".join(lines)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "n/a"


def _short(name: str, width: int = 90) -> str:
    """A kernel name for a markdown cell: no `void ` prefix, no pipes, at most `width` characters."""
    name = name.removeprefix("void ").replace("|", "\\|")
    return name if len(name) <= width else name[: width - 1] + "…"


def profile_steps(step: Callable[[], None], steps: int, device: torch.device) -> KernelProfile:
    """Profile `steps` calls of `step` (after one warm-up call) and sum kernel time per name.

    On CUDA the rows are device kernels, memcpys and memsets as CUPTI reports them. Kernels
    launched inside a CUDA-graph replay are reported by some CUDA/CUPTI versions and not by
    others; when none are reported the profile says so in `note` instead of dividing by zero. On
    any other device the rows are the outermost aten ops of the profiled region (nested ops would
    count the same time twice), timed on the host.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    step()
    sync()
    # The profiler adds host work per op and per launch; this plain run tells how much.
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    unprofiled_seconds = time.perf_counter() - start

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall_seconds = time.perf_counter() - start
    rows = kernel_rows(list(prof.events() or []), cuda=cuda)
    # Kernels of one stream never overlap, so their sum is the time the device was busy. Kernels on
    # concurrent streams do overlap, and this sum would overcount busy time (and undercount gaps).
    busy_us = sum(row.total_us for row in rows)
    note = ""
    if cuda and not rows:
        note = (
            "the profiler reported no CUDA kernels (kernels launched inside CUDA-graph replays are "
            "not traced by every CUDA/CUPTI version), so busy time and host gaps are unknown"
        )
    return KernelProfile(
        steps=steps,
        wall_ms_per_step=1000 * wall_seconds / steps,
        busy_ms_per_step=busy_us / 1000 / steps,
        rows=rows,
        source="cuda kernels" if cuda else "cpu ops",
        unprofiled_wall_ms_per_step=1000 * unprofiled_seconds / steps,
        note=note,
    )


def kernel_rows(events: list[Any], cuda: bool) -> list[KernelRow]:
    """Profiler `FunctionEvent`s summed per name: device kernels on CUDA, else outermost ops."""
    from torch.autograd import DeviceType

    if cuda:
        # Device-side user annotations span kernels that are also reported on their own.
        picked = [
            event
            for event in events
            if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)
        ]
    else:
        picked = _outermost_ops(events)
    totals: dict[str, tuple[int, float]] = {}
    for event in picked:
        calls, total = totals.get(event.name, (0, 0.0))
        totals[event.name] = (calls + 1, total + float(event.time_range.elapsed_us()))
    return [
        KernelRow(name=name, category=categorize(name), calls=calls, total_us=total)
        for name, (calls, total) in totals.items()
    ]


def _is_op(event: Any) -> bool:
    """An operator call (`aten::mm`, `quantized::linear`) on the host, not a record_function range."""
    from torch.autograd import DeviceType

    return (
        event.device_type == DeviceType.CPU
        and not event.is_async
        and not getattr(event, "is_user_annotation", False)
        and "::" in event.name
    )


def _outermost_ops(events: list[Any]) -> list[Any]:
    """Ops with no op above them; a record_function range above them does not count."""
    outermost = []
    for event in events:
        if not _is_op(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not _is_op(parent):
            parent = parent.cpu_parent
        if parent is None:
            outermost.append(event)
    return outermost
