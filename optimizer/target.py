"""TargetSpec: the device a deployment runs on, detected here and completed by a preset.

Detection reads /proc and the cgroup limits (the CPU, in optimizer.host_cpu) and NVML (NVIDIA
GPUs). NVML comes from `nvidia-ml-py` and is imported only here, when a target is detected, so
`import optimizer` never touches a GPU.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.host_cpu import ROOT, cpu_identity, read_or_empty, usable_cores, usable_memory_bytes
from optimizer.measure.nvml_device import cuda_visible_devices, cuda_visible_devices_empty, nvml_handle

log = logging.getLogger(__name__)

GIB = 1 << 30
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
    power_limit_watts: float


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
    # set but empty, the variable hides every GPU from CUDA while NVML still lists them
    hidden = (
        " (CUDA_VISIBLE_DEVICES is set but empty: it hides every GPU)" if cuda_visible_devices_empty() else ""
    )
    unhide = (
        "unset CUDA_VISIBLE_DEVICES or list a GPU in it (e.g. CUDA_VISIBLE_DEVICES=0), " if hidden else ""
    )
    if gpu is not None and not _torch_cuda_usable():
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
    major, _minor = gpu.compute_capability
    spec = TargetSpec(
        kind="cuda",
        name=cfg.name if cfg.name != "auto" else _preset_name(gpu.name),
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
    return _fill_from_preset(spec, cfg.config_dir) if cfg.name == "auto" else spec


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


# The packaged GPU presets by the tokens of NVML's board name they need and those they exclude:
# the family's own preset is one variant (h100: SXM; a100: SXM 80GB), so a board naming another
# variant takes that variant's preset, or none rather than the wrong board's bandwidth and power.
BOARD_PRESETS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("h200", frozenset({"h200"}), frozenset({"nvl"})),
    ("h100-pcie", frozenset({"h100", "pcie"}), frozenset()),
    ("h100", frozenset({"h100"}), frozenset({"pcie", "nvl"})),
    ("a100-pcie-40gb", frozenset({"a100", "pcie", "40gb"}), frozenset()),
    ("a100-pcie", frozenset({"a100", "pcie"}), frozenset({"40gb"})),
    ("a100-40gb", frozenset({"a100", "40gb"}), frozenset({"pcie"})),
    ("a100", frozenset({"a100"}), frozenset({"pcie", "40gb"})),
    ("l40s", frozenset({"l40s"}), frozenset()),
    ("l4", frozenset({"l4"}), frozenset()),
)


def _preset_name(gpu_name: str) -> str:
    """The most specific packaged preset for the board (most tokens matched); else its name."""
    tokens = re.split(r"[\s_-]+", gpu_name.lower())
    matches = [
        (len(need), name)
        for name, need, skip in BOARD_PRESETS
        if need <= set(tokens) and not skip & set(tokens)
    ]
    if matches:
        return max(matches)[1]
    return "-".join(t for t in tokens if t != "nvidia")


def _fill_from_preset(spec: TargetSpec, config_dir: str | None) -> TargetSpec:
    """With target=auto on a known GPU, take the bandwidth and FLOP/s the config leaves out from
    the user's preset of its name (`user_preset`), then from conf/target/<preset>.yaml."""
    from optimizer.config import CONF_DIR

    if spec.memory_bandwidth_gb_per_s is None or spec.peak_bf16_tflops is None:
        user = user_preset(config_dir, spec.name)
        if user is not None:
            spec = replace(
                spec,
                memory_bandwidth_gb_per_s=spec.memory_bandwidth_gb_per_s or user.memory_bandwidth_gb_per_s,
                peak_bf16_tflops=spec.peak_bf16_tflops or user.peak_bf16_tflops,
            )
    preset = CONF_DIR / "target" / f"{spec.name}.yaml"
    if not preset.is_file():
        return spec
    import yaml

    values = yaml.safe_load(preset.read_text()) or {}
    return replace(
        spec,
        memory_bandwidth_gb_per_s=spec.memory_bandwidth_gb_per_s or values.get("memory_bandwidth_gb_per_s"),
        peak_bf16_tflops=spec.peak_bf16_tflops or values.get("peak_bf16_tflops"),
    )


def user_preset(config_dir: str | None, name: str) -> TargetConfig | None:
    """The target preset `name` of the user's config directory, validated as target=<name> reads
    it; None where there is none (nor a directory: a worker on a node without it keeps the
    figures the config carries, then the packaged preset's)."""
    path = Path(config_dir) / "target" / f"{name}.yaml" if config_dir else None
    if path is None or not path.is_file():
        return None
    from optimizer.config.compose import compose_preset, validated

    # the preset alone: the run's other groups and overrides are not known where a worker detects
    preset = validated(compose_preset("target", name, config_dir).target)
    assert isinstance(preset, TargetConfig)
    if path not in _READ:
        _READ.add(path)
        log.info("target=auto on a %s: bandwidth and FLOP/s from %s", name, path)
    return preset


_READ: set[Path] = set()  # the user presets said: a run detects its target more than once


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
        _check_device_index(index, count)
        if index >= count:  # NVML sees no GPU: a CPU host
            return None
        try:  # the board behind cuda:<index>, as CUDA_VISIBLE_DEVICES numbers devices
            handle = nvml_handle(pynvml, index)
        except (ValueError, pynvml.NVMLError):
            return None
        name = pynvml.nvmlDeviceGetName(handle)
        return GpuInfo(
            name=name.decode() if isinstance(name, bytes) else name,
            index=index,
            memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            driver=_text(pynvml.nvmlSystemGetDriverVersion()),
            compute_capability=_capability(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
            power_limit_watts=pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        )
    finally:
        pynvml.nvmlShutdown()


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
