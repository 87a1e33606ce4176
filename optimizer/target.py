"""TargetSpec: the device a deployment runs on, detected here and completed by a preset.

Detection reads /proc and the cgroup limits (the CPU, in optimizer.host_cpu) and NVML (NVIDIA
GPUs). NVML comes from `nvidia-ml-py` and is imported only here, when a target is detected, so
`import optimizer` never touches a GPU.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.host_cpu import ROOT, cpu_identity, read_or_empty, usable_cores, usable_memory_bytes
from optimizer.measure.nvml_device import cuda_hides_every_gpu, cuda_visible_devices, nvml_handle
from optimizer.target_presets import BOARD_PRESETS, fill_from_packaged, user_preset, with_user_preset
from optimizer.target_presets import preset_name as _preset_name

__all__ = ["BOARD_PRESETS", "GpuInfo", "TargetSpec", "cuda_hides_every_gpu", "detect_target", "user_preset"]

log = logging.getLogger(__name__)

GIB = 1 << 30
UNNAMED_GPU = "NVIDIA GPU"  # a board whose name NVML cannot read: no preset's figures
TRACKED_PACKAGES = (
    "wattsmith",
    "torch",
    "transformers",
    "accelerate",
    "optimum-quanto",
    "hqq",
    "torchao",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "onnx",
    "onnxscript",
    "tensorrt",
    "llama-cpp-python",
    # flash_attention_2/_3 run these kernels; flash-attn 3 (its module flash_attn_interface) is
    # the `flash_attn_3` distribution, `flashattn-hopper` in its earlier builds
    "flash-attn",
    "flash-attn-3",
    "flashattn-hopper",
)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    index: int
    memory_bytes: int
    driver: str
    compute_capability: tuple[int, int]
    power_limit_watts: float | None  # None where NVML cannot read it (then the preset's TDP)


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target. `memory_bytes` is the budget candidates must fit in."""

    kind: str  # "cpu" | "cuda"
    name: str
    device: str  # torch device string: "cpu" or "cuda:<index>"
    cpu_model: str
    cores: int
    memory_bytes: int
    bf16: bool
    fp16: bool
    fp8: bool
    tdp_watts: float | None
    memory_bandwidth_gb_per_s: float | None
    peak_bf16_tflops: float | None
    energy_source: str  # requested: auto | nvml | rapl | estimate
    cpu_active_watts_per_core: float
    cpu_idle_watts_per_core: float
    gpu: GpuInfo | None = None
    device_count: int = 1  # GPUs CUDA lets this process use (the layout rules' bound); not in the fingerprint

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def gpu_indices(self, count: int) -> list[int]:
        """The CUDA indices of `count` GPUs for one candidate's processes: from the target's own
        (`target.device_index`) on; [] on a CPU target."""
        if self.gpu is None:
            return []
        return [self.gpu.index + k for k in range(count)]

    def fingerprint(self) -> dict[str, object]:
        """Hardware and software identity recorded in recipes and used in store keys."""
        return {
            "kind": self.kind,
            "name": self.name,
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "memory_gib": round(self.memory_bytes / GIB, 1),
            # the board, not its CUDA number: a worker that sees only its own GPU calls it 0
            "gpu": {k: v for k, v in asdict(self.gpu).items() if k != "index"} if self.gpu else None,
            "python": platform.python_version(),
            "platform": f"{platform.system()}-{platform.machine()}",
            "packages": package_versions(),
        }

    def measured_identity(self) -> dict[str, object]:
        """The fingerprint less what changes no measurement: the preset's name and the memory
        budget (`target.memory_gib` decides what fits, not how a candidate that fits measures).
        Store contexts use it: a run under a smaller budget reuses what the full one measured."""
        return {k: v for k, v in self.fingerprint().items() if k not in ("name", "memory_gib")}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def detect_target(cfg: TargetConfig) -> TargetSpec:
    """Resolve `target=` into a TargetSpec; user settings win over detected values."""
    cpu_model, cores, cpu_memory, cpu_bf16 = _detect_cpu()
    gpu = _detect_gpu(cfg.device_index) if cfg.kind in ("auto", "cuda") else None
    # CUDA_VISIBLE_DEVICES can hide every GPU from CUDA while NVML still lists them
    hidden = cuda_hides_every_gpu()
    unhide = (
        "unset CUDA_VISIBLE_DEVICES or list each GPU in it once (e.g. CUDA_VISIBLE_DEVICES=0), "
        if hidden
        else ""
    )
    if gpu is not None and (hidden or not _torch_cuda_usable()):
        _warn_once(f"NVML sees {gpu.name} but torch has no CUDA{hidden}; targeting the CPU")
        gpu = None
    if cfg.kind == "cuda" and gpu is None:
        raise UserError(
            "target",
            f"asks for a CUDA GPU ({cfg.name}) but none is usable here (NVML or torch.cuda){hidden}",
            f"{unhide}run on the GPU machine, or use target=cpu / target=auto",
        )
    if gpu is None:
        return TargetSpec(
            kind="cpu",
            name=cfg.name if cfg.name != "auto" else "cpu",
            device="cpu",
            cpu_model=cpu_model,
            cores=cores,
            memory_bytes=_budget(cpu_memory, cfg.memory_gib, "machine"),
            bf16=cpu_bf16 if cfg.bf16 is None else cfg.bf16,
            fp16=bool(cfg.fp16),  # no fast fp16 matmul on CPUs by default
            fp8=False,
            tdp_watts=cfg.tdp_watts,
            memory_bandwidth_gb_per_s=cfg.memory_bandwidth_gb_per_s,
            peak_bf16_tflops=cfg.peak_bf16_tflops,
            energy_source=cfg.energy_source,
            cpu_active_watts_per_core=cfg.cpu_active_watts_per_core,
            cpu_idle_watts_per_core=cfg.cpu_idle_watts_per_core,
        )
    return _cuda_target(cfg, gpu, cpu_model, cores)


def _cuda_target(cfg: TargetConfig, gpu: GpuInfo, cpu_model: str, cores: int) -> TargetSpec:
    """The GPU target: the config's settings, then (target=auto) the user's preset of the board,
    then the device's readings, then the packaged preset's figures (optimizer/target_presets.py):
    of the board's name for auto, of the preset's for target=<name> (a user's h100.yaml in
    --config-dir replaces the packaged one whole, so what it leaves out would be lost)."""
    auto = cfg.name == "auto"  # agrees with detect_target's cfg.kind: a packaged name fixes its kind
    name = _preset_name(gpu.name) if auto else cfg.name
    if auto:
        cfg = with_user_preset(cfg, user_preset(cfg.config_dir, name))
    major, _minor = gpu.compute_capability
    spec = TargetSpec(
        kind="cuda",
        name=name,
        device=f"cuda:{gpu.index}",
        cpu_model=cpu_model,
        cores=cores,
        memory_bytes=_budget(gpu.memory_bytes, cfg.memory_gib, "GPU"),
        bf16=(major >= 8) if cfg.bf16 is None else cfg.bf16,
        fp16=True if cfg.fp16 is None else cfg.fp16,
        fp8=(gpu.compute_capability >= (8, 9)) if cfg.fp8 is None else cfg.fp8,
        tdp_watts=cfg.tdp_watts or gpu.power_limit_watts,
        memory_bandwidth_gb_per_s=cfg.memory_bandwidth_gb_per_s,
        peak_bf16_tflops=cfg.peak_bf16_tflops,
        energy_source=cfg.energy_source,
        cpu_active_watts_per_core=cfg.cpu_active_watts_per_core,
        cpu_idle_watts_per_core=cfg.cpu_idle_watts_per_core,
        gpu=gpu,
        device_count=_gpu_count(),
    )
    return fill_from_packaged(spec)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A run detects its target more than once (to choose the presets, then to measure)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


# A preset's memory_gib is the board's nominal size, which NVML reports a little lower (an H100
# 80GB as 79.6 GiB, an L4 24GB as 22.5): a budget this far above the device is not worth a warning.
NOMINAL_MEMORY_SLACK = 0.1


def _budget(detected_bytes: int, memory_gib: float | None, device: str) -> int:
    if memory_gib is None:
        return detected_bytes
    if memory_gib * GIB > detected_bytes * (1 + NOMINAL_MEMORY_SLACK):
        size = f"{detected_bytes / GIB:.1f} GiB"
        _warn_once(
            f"target.memory_gib={memory_gib:g} is more than the {size} this {device} has; using {size} "
            "(set target.memory_gib to at most that, or null for the whole device)"
        )
    return min(detected_bytes, int(memory_gib * GIB))


def _detect_cpu(root: Path = ROOT) -> tuple[str, int, int, bool]:
    """The CPU's name, the cores and memory this process may use, and whether it has bf16."""
    model, bf16 = cpu_identity(read_or_empty(root / "proc/cpuinfo"))
    memory = host_memory_bytes(root) or 8 * GIB
    return model or platform.processor() or platform.machine(), usable_cores(root), memory, bf16


def physical_memory_bytes(target: TargetSpec) -> int:
    """The memory the target's device has, whatever budget `target.memory_gib` sets for candidates
    (a big GPU standing in for a small one still holds what only measures, like the reference)."""
    if target.gpu is not None:
        return target.gpu.memory_bytes
    return host_memory_bytes() or target.memory_bytes


def host_memory_bytes(root: Path = ROOT) -> int | None:
    """The memory this process may use: the host's MemTotal, or a container's cgroup limit where
    that is lower (a candidate that fits the host but not the container is OOM-killed); None
    where neither is known."""
    return usable_memory_bytes(root)


def _detect_gpu(index: int) -> GpuInfo | None:
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        _warn_once(f"NVML cannot count the GPUs ({exc}); targeting the CPU")
        pynvml.nvmlShutdown()
        return None
    try:
        hidden = bool(cuda_hides_every_gpu())
        if not hidden:  # hiding every GPU, the variable makes any index CUDA's, none usable
            _check_device_index(index, count)
        if index >= count:  # NVML sees no GPU: a CPU host
            return None
        try:  # the board behind cuda:<index>, as CUDA_VISIBLE_DEVICES numbers devices; NVML's
            # own where the variable hides them all (the board is named in the note that says so)
            handle = pynvml.nvmlDeviceGetHandleByIndex(index) if hidden else nvml_handle(pynvml, index)
        except (ValueError, pynvml.NVMLError) as exc:
            _warn_once(f"{_unopened_device(index, hidden)} ({exc}); targeting the CPU")
            return None
        return _board(pynvml, handle, index)
    finally:
        pynvml.nvmlShutdown()


def _unopened_device(index: int, hidden: bool) -> str:
    """What names the board NVML could not open: CUDA_VISIBLE_DEVICES's entry (`5` on a one-GPU
    host, a UUID of no board here: CUDA sees no such device either), else NVML's index."""
    visible = cuda_visible_devices()
    if hidden or not visible:
        return f"NVML cannot open GPU {index}"
    return f"CUDA_VISIBLE_DEVICES={','.join(visible)} names no GPU of this host as cuda:{index}"


def _board(pynvml: Any, handle: Any, index: int) -> GpuInfo | None:
    """The board's readings. One NVML cannot give (Not Supported on a MIG instance, a driver
    error) is said once and stood in for: the memory and compute capability by CUDA's (torch),
    the name and driver by placeholders; without its memory or capability (what fits, which
    precisions) the board cannot be targeted, and the CPU is."""
    failed: list[str] = []

    def read(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except pynvml.NVMLError as exc:
            failed.append(f"{what} ({exc})")
            return None

    name = read("name", lambda: pynvml.nvmlDeviceGetName(handle))
    memory = read("memory", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    capability = read("compute capability", lambda: pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    driver = read("driver version", pynvml.nvmlSystemGetDriverVersion)
    board = _text(name) if name is not None else UNNAMED_GPU
    memory_bytes = int(memory.total) if memory is not None else None
    major_minor = _capability(capability) if capability is not None else None
    cuda = _torch_readings(index) if memory_bytes is None or major_minor is None else None
    if cuda is not None:
        memory_bytes, major_minor = memory_bytes or cuda[0], major_minor or cuda[1]
    if failed:
        _warn_once(
            f"NVML cannot read the {', '.join(failed)} of {board} (cuda:{index}); "
            + _unreadable_outcome(memory_bytes is not None and major_minor is not None, cuda is not None)
        )
    if memory_bytes is None or major_minor is None:
        return None
    return GpuInfo(
        name=board,
        index=index,
        memory_bytes=memory_bytes,
        driver=_text(driver) if driver is not None else "unknown",
        compute_capability=major_minor,
        power_limit_watts=_power_limit_watts(pynvml, handle),
    )


def _unreadable_outcome(usable: bool, from_cuda: bool) -> str:
    if not usable:
        return "targeting the CPU (check the board with nvidia-smi, or set target=cpu to say so)"
    return "targeting it with the memory and capability CUDA reports" if from_cuda else "targeting it"


def _torch_readings(index: int) -> tuple[int, tuple[int, int]] | None:
    """The memory and compute capability CUDA reports for cuda:<index>; None without CUDA."""
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    properties = torch.cuda.get_device_properties(index)
    return int(properties.total_memory), (int(properties.major), int(properties.minor))


def _power_limit_watts(pynvml: Any, handle: Any) -> float | None:
    """The board's enforced power limit; None where NVML does not report it (Not Supported on
    some boards and MIG instances): the preset's TDP stands in."""
    try:
        return float(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)) / 1000.0
    except pynvml.NVMLError:
        return None


def _check_device_index(index: int, nvml_count: int) -> None:
    """On a host with GPUs an index past them is a typo, not a CPU host: refuse it rather than
    let target=auto quietly search the CPU."""
    visible = cuda_visible_devices()
    count = min(nvml_count, len(visible)) if visible else nvml_count
    if nvml_count and index >= count:
        where = f" (CUDA_VISIBLE_DEVICES={','.join(visible)})" if visible else ""
        raise UserError(
            "target.device_index",
            f"is {index}, but CUDA can use only {count} GPU(s) here{where}",
            f"use a target.device_index from 0 to {count - 1}, or target=cpu",
        )


def _gpu_count() -> int:
    """GPUs this process may use, as CUDA indexes them (CUDA_VISIBLE_DEVICES honoured: a search
    worker given one GPU sees one)."""
    import torch

    return max(int(torch.cuda.device_count()), 1)  # at least the GPU just detected


def _capability(value: Any) -> tuple[int, int]:
    major, minor = value
    return int(major), int(minor)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _torch_cuda_usable() -> bool:
    import torch  # detection runs inside an optimize run, never at import

    return bool(torch.cuda.is_available())
