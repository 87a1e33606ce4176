"""detect_target: the CPU from /proc, NVIDIA GPUs through a (mocked) NVML, presets and budgets."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer import target as target_module
from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.target import GIB, GpuInfo, _preset_name, detect_target


class _NVMLError(Exception):
    pass


def fake_pynvml(
    name: str | bytes = b"NVIDIA H100 80GB HBM3",
    memory_gib: float = 80,
    capability: tuple[int, int] = (9, 0),
    power_limit_mw: int = 700_000,
    count: int = 1,
    init_fails: bool = False,
) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = _NVMLError
    nvml.calls = []

    def init() -> None:
        if init_fails:
            raise _NVMLError("driver not loaded")
        nvml.calls.append("init")

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    nvml.nvmlDeviceGetName = lambda h: name
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=int(memory_gib * GIB), used=0)
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: capability
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: power_limit_mw
    return nvml


@pytest.fixture
def with_gpu(monkeypatch: pytest.MonkeyPatch):
    """Install a fake pynvml and pretend torch can use CUDA."""

    def install(**kwargs) -> types.ModuleType:
        nvml = fake_pynvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)
        return nvml

    return install


def test_cpu_target_is_detected() -> None:
    spec = detect_target(TargetConfig(kind="cpu"))
    assert spec.kind == "cpu" and not spec.is_cuda
    assert spec.device == "cpu"
    assert spec.name == "cpu"
    assert spec.cores >= 1
    assert spec.memory_bytes > 0
    assert spec.fp8 is False
    assert spec.gpu is None
    assert spec.cpu_model


def test_cpu_settings_from_the_config_win() -> None:
    spec = detect_target(
        TargetConfig(
            kind="cpu", name="laptop", bf16=False, energy_source="estimate", cpu_active_watts_per_core=9
        )
    )
    assert spec.name == "laptop"
    assert spec.bf16 is False
    assert spec.energy_source == "estimate"
    assert spec.cpu_active_watts_per_core == 9


def test_memory_gib_caps_the_cpu_budget() -> None:
    detected = detect_target(TargetConfig(kind="cpu")).memory_bytes
    assert detect_target(TargetConfig(kind="cpu", memory_gib=0.5)).memory_bytes == GIB // 2
    # a budget larger than the machine does not invent memory
    assert detect_target(TargetConfig(kind="cpu", memory_gib=1e6)).memory_bytes == detected


def test_cuda_without_a_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "_detect_gpu", lambda index: None)
    with pytest.raises(UserError) as info:
        detect_target(TargetConfig(kind="cuda"))
    assert info.value.field.startswith("target")
    assert "target=cpu" in info.value.fix


def test_auto_without_a_gpu_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "_detect_gpu", lambda index: None)
    assert detect_target(TargetConfig(kind="auto")).kind == "cpu"


def test_cpu_kind_never_asks_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(index: int) -> None:
        raise AssertionError("NVML queried for a CPU target")

    monkeypatch.setattr(target_module, "_detect_gpu", boom)
    assert detect_target(TargetConfig(kind="cpu")).kind == "cpu"


def test_nvml_gpu_is_mapped(with_gpu) -> None:
    nvml = with_gpu()
    gpu = target_module._detect_gpu(0)
    assert gpu == GpuInfo(
        name="NVIDIA H100 80GB HBM3",
        index=0,
        memory_bytes=80 * GIB,
        driver="550.54.15",
        compute_capability=(9, 0),
        power_limit_watts=700.0,
    )
    assert nvml.calls == ["init", "shutdown"]  # NVML is shut down again


def test_nvml_missing_device_or_driver_gives_none(with_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    with_gpu(count=0)
    assert target_module._detect_gpu(0) is None
    with_gpu(init_fails=True)
    assert target_module._detect_gpu(0) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert target_module._detect_gpu(0) is None


def test_auto_on_an_h100_fills_the_preset(with_gpu) -> None:
    with_gpu()
    spec = detect_target(TargetConfig(kind="auto"))
    assert spec.kind == "cuda" and spec.is_cuda
    assert spec.name == "h100"
    assert spec.device == "cuda:0"
    assert spec.memory_bytes == 80 * GIB
    assert (spec.bf16, spec.fp16, spec.fp8) == (True, True, True)
    assert spec.tdp_watts == 700.0
    assert spec.memory_bandwidth_gb_per_s == 3350  # from conf/target/h100.yaml
    assert spec.peak_bf16_tflops == 989
    assert spec.gpu is not None and spec.gpu.compute_capability == (9, 0)
    assert spec.fingerprint()["gpu"]["name"] == "NVIDIA H100 80GB HBM3"


def test_memory_gib_caps_the_gpu_budget(with_gpu) -> None:
    with_gpu(memory_gib=80)
    assert detect_target(TargetConfig(kind="cuda", memory_gib=24)).memory_bytes == 24 * GIB
    assert detect_target(TargetConfig(kind="cuda", memory_gib=200)).memory_bytes == 80 * GIB


@pytest.mark.parametrize(
    ("capability", "bf16", "fp8"),
    [((7, 5), False, False), ((8, 0), True, False), ((8, 9), True, True), ((9, 0), True, True)],
)
def test_capabilities_follow_compute_capability(with_gpu, capability, bf16: bool, fp8: bool) -> None:
    with_gpu(name="NVIDIA Some GPU", capability=capability)
    spec = detect_target(TargetConfig(kind="cuda"))
    assert (spec.bf16, spec.fp8) == (bf16, fp8)
    assert spec.name == "some-gpu"
    assert spec.memory_bandwidth_gb_per_s is None  # no preset for an unknown GPU


def test_preset_values_from_the_config_win_over_nvml(with_gpu) -> None:
    with_gpu(name="NVIDIA A100-SXM4-80GB", capability=(8, 0), power_limit_mw=400_000)
    spec = detect_target(TargetConfig(kind="cuda", name="a100", fp8=False, tdp_watts=350.0, bf16=False))
    assert spec.name == "a100"
    assert spec.tdp_watts == 350.0
    assert spec.bf16 is False


def test_nvml_gpu_without_torch_cuda_targets_the_cpu(
    with_gpu, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with_gpu()
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: False)
    monkeypatch.setattr(target_module, "_WARNED", set())
    with caplog.at_level("WARNING", logger=target_module.__name__):
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"
        assert detect_target(TargetConfig(kind="auto")).kind == "cpu"  # a run detects twice
    warnings = [r.getMessage() for r in caplog.records if "torch has no CUDA" in r.getMessage()]
    assert warnings == ["NVML sees NVIDIA H100 80GB HBM3 but torch has no CUDA; targeting the CPU"]
    with pytest.raises(UserError):
        detect_target(TargetConfig(kind="cuda"))


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
    ],
)
def test_preset_name_from_the_gpu_name(name: str, preset: str) -> None:
    assert _preset_name(name) == preset


def test_l40_is_not_an_l4() -> None:
    assert _preset_name("NVIDIA L40") != "l4"
    assert _preset_name("NVIDIA L40") == "l40"


def test_fingerprint_names_the_software() -> None:
    fp = detect_target(TargetConfig(kind="cpu")).fingerprint()
    assert fp["kind"] == "cpu"
    assert {"torch", "transformers"} <= set(fp["packages"])
    assert fp["gpu"] is None


def test_nvml_detects_the_board_behind_cuda_visible_devices(
    with_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuda:0 of a process given GPU 2 is NVML's board 2: its name and memory are detected."""
    nvml = with_gpu(count=4)
    nvml.nvmlDeviceGetName = lambda h: {"handle2": "NVIDIA L4"}.get(h, "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    gpu = target_module._detect_gpu(0)
    assert gpu is not None and gpu.name == "NVIDIA L4" and gpu.index == 0
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=2"):
        target_module._detect_gpu(1)  # only one device is visible


def test_a_gpu_target_counts_the_gpus_cuda_lets_it_use(with_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    with_gpu()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spec = detect_target(TargetConfig(kind="cuda"))
    assert spec.device_count == 2 and spec.gpu_indices(2) == [0, 1]
    assert "device_count" not in spec.fingerprint()  # store keys do not change with the host's GPUs


def test_the_fingerprint_names_the_board_not_its_cuda_number(with_gpu) -> None:
    """A local worker sees only its own GPU, as index 0: its store context must be the coordinator's."""
    with_gpu()
    coordinator = detect_target(TargetConfig(kind="cuda", device_index=0))
    worker = replace(coordinator, gpu=replace(coordinator.gpu, index=1))
    assert worker.fingerprint() == coordinator.fingerprint()
    assert coordinator.fingerprint()["gpu"]["name"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("distribution", ["flash-attn", "flash-attn-3", "flashattn-hopper"])
def test_the_fingerprint_names_the_flash_attention_kernels(
    distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flash_attention_2/_3 candidates run flash-attn's kernels: another version, other results.
    flash-attn 3 (module flash_attn_interface) is `flash_attn_3`, earlier `flashattn-hopper`."""
    installed = target_module.metadata.version

    def version(name: str) -> str:
        return "2.8.3" if name == distribution else installed(name)

    monkeypatch.setattr(target_module.metadata, "version", version)
    assert target_module.package_versions()[distribution] == "2.8.3"


@pytest.mark.parametrize("kind", ["auto", "cuda"])
def test_a_device_index_past_the_gpus_is_a_user_error(with_gpu, kind: str) -> None:
    """target.device_index=3 on a 1-GPU host is a typo: target=auto must not search the CPU."""
    with_gpu(count=1)
    with pytest.raises(UserError) as info:
        detect_target(TargetConfig(kind=kind, device_index=3))
    assert info.value.field == "target.device_index"
    assert "only 1 GPU" in info.value.problem
    assert "from 0 to 0" in info.value.fix


def test_a_device_index_past_cuda_visible_devices_is_a_user_error(
    with_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_gpu(count=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=2") as info:
        detect_target(TargetConfig(kind="auto", device_index=1))
    assert info.value.field == "target.device_index"


@pytest.mark.parametrize("device_index", [0, 3])
def test_auto_on_a_host_without_gpus_is_still_the_cpu(with_gpu, device_index: int) -> None:
    with_gpu(count=0)
    assert detect_target(TargetConfig(kind="auto", device_index=device_index)).kind == "cpu"
    with_gpu(init_fails=True)  # no driver
    assert detect_target(TargetConfig(kind="auto", device_index=device_index)).kind == "cpu"


def test_gpus_hidden_by_cuda_visible_devices_leave_auto_on_the_cpu(
    with_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA_VISIBLE_DEVICES=-1 hides the GPUs: not an index error."""
    nvml = with_gpu(count=1)

    def no_such_uuid(name: str) -> None:
        raise nvml.NVMLError(name)

    nvml.nvmlDeviceGetHandleByUUID = no_such_uuid
    nvml.nvmlDeviceGetUUID = lambda h: "GPU-0123"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_target(TargetConfig(kind="auto")).kind == "cpu"


def _host(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("part", "features", "model", "bf16"),
    [
        ("0xd0c", "fp asimd atomics", "Arm Neoverse-N1", False),
        ("0xd40", "fp asimd sve bf16", "Arm Neoverse-V1", True),
    ],
)
def test_aarch64_cpus_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: str, features: str, model: str, bf16: bool
) -> None:
    """Graviton2 (Neoverse-N1) and Graviton3 (Neoverse-V1): /proc/cpuinfo has no "model name"."""
    cpuinfo = f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU part\t: {part}\n"
    root = _host(tmp_path, {"proc/cpuinfo": cpuinfo})
    monkeypatch.setattr(target_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(target_module.platform, "processor", lambda: "aarch64")
    detect_cpu = target_module._detect_cpu
    monkeypatch.setattr(target_module, "_detect_cpu", lambda: detect_cpu(root))
    spec = detect_target(TargetConfig(kind="cpu"))
    assert (spec.cpu_model, spec.bf16) == (model, bf16)
    assert spec.fingerprint()["cpu_model"] == model


def test_a_containers_limits_bound_the_cpu_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container of 2 CPUs and 4 GiB (cgroup v2) on a 64-core, 64 GiB host: the search must not
    try 64 threads, nor budget 64 GiB."""
    root = _host(
        tmp_path,
        {
            "proc/meminfo": f"MemTotal:       {64 * GIB // 1024} kB\n",
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "200000 100000\n",
            "sys/fs/cgroup/memory.max": f"{4 * GIB}\n",
        },
    )
    monkeypatch.setattr(target_module.platform, "processor", lambda: "x86_64")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    detect_cpu = target_module._detect_cpu
    monkeypatch.setattr(target_module, "_detect_cpu", lambda: detect_cpu(root))
    spec = detect_target(TargetConfig(kind="cpu"))
    assert (spec.cores, spec.memory_bytes) == (2, 4 * GIB)
    assert spec.cpu_model == "x86_64"  # no /proc/cpuinfo under the root: the platform's name
    assert target_module.host_memory_bytes(root) == 4 * GIB
