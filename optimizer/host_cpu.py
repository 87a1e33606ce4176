"""The host side of target detection: which CPU this is, and how much of it and of memory this
process may use.

Every read is under `root` ("/" on a real host) so that tests can lay out a fake /proc and
/sys/fs/cgroup. A file that is missing or unreadable means "not known", never an error.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/")

# aarch64 /proc/cpuinfo has no "model name": the core is named by its MIDR implementer and part
# (the ids lscpu uses). Stores and `verify` key CPU measurements on the name, so a Graviton2
# (Neoverse-N1) and a Graviton3 (Neoverse-V1) must not both be "aarch64".
ARM_CORES: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "Arm Cortex-A53",
    (0x41, 0xD05): "Arm Cortex-A55",
    (0x41, 0xD07): "Arm Cortex-A57",
    (0x41, 0xD08): "Arm Cortex-A72",
    (0x41, 0xD09): "Arm Cortex-A73",
    (0x41, 0xD0A): "Arm Cortex-A75",
    (0x41, 0xD0B): "Arm Cortex-A76",
    (0x41, 0xD0C): "Arm Neoverse-N1",
    (0x41, 0xD0D): "Arm Cortex-A77",
    (0x41, 0xD40): "Arm Neoverse-V1",
    (0x41, 0xD41): "Arm Cortex-A78",
    (0x41, 0xD44): "Arm Cortex-X1",
    (0x41, 0xD46): "Arm Cortex-A510",
    (0x41, 0xD47): "Arm Cortex-A710",
    (0x41, 0xD48): "Arm Cortex-X2",
    (0x41, 0xD49): "Arm Neoverse-N2",
    (0x41, 0xD4F): "Arm Neoverse-V2",
    (0x41, 0xD80): "Arm Cortex-A520",
    (0x41, 0xD81): "Arm Cortex-A720",
    (0x41, 0xD82): "Arm Cortex-X4",
    (0x41, 0xD84): "Arm Neoverse-V3",
    (0x41, 0xD8E): "Arm Neoverse-N3",
    (0xC0, 0xAC3): "Ampere-1",
}
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_identity(cpuinfo: str) -> tuple[str | None, bool]:
    """The CPU's name (None when /proc/cpuinfo gives none) and whether it has bf16 arithmetic.

    x86 names come from "model name" and bf16 from "flags", as always (the name is part of the
    target fingerprint). aarch64 has neither: its cores are named from "CPU implementer" and
    "CPU part", and bf16 is a "Features" entry."""
    model = None
    flags: set[str] | None = None
    features: set[str] | None = None
    implementer = ""
    arm_cores: list[str] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and value and model is None:
            model = value
        elif key == "flags" and flags is None:
            flags = set(value.split())
        elif key == "Features" and features is None:
            features = set(value.split())
        elif key == "CPU implementer":
            implementer = value
        elif key == "CPU part":
            arm_cores.append(arm_core_name(implementer, value))
    if model is None and arm_cores:
        model = " + ".join(dict.fromkeys(arm_cores))  # big.LITTLE: each kind of core, in order
    bf16 = bool((flags or set()) & X86_BF16_FLAGS) or "bf16" in (features or set())
    return model, bf16


def arm_core_name(implementer: str, part: str) -> str:
    """A known core's name, else the raw ids (so that two unknown parts still differ)."""
    try:
        ids = (int(implementer, 16), int(part, 16))
    except ValueError:
        return f"arm {implementer or '?'} part {part}"
    return ARM_CORES.get(ids, f"arm {ids[0]:#04x} part {ids[1]:#05x}")


def usable_cores(root: Path = ROOT) -> int:
    """The CPUs this process may use: its affinity (which a cpuset or `taskset` narrows), and no
    more than a container's CPU quota allows (the quota leaves the affinity at the host's count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpus(root)
    return max(min(cores, quota), 1) if quota is not None else cores


def usable_memory_bytes(root: Path = ROOT) -> int | None:
    """The memory this process may use: the host's MemTotal, or a container's limit where lower;
    None where neither is known."""
    known = [v for v in (meminfo_bytes("MemTotal", root), cgroup_memory_bytes(root)) if v is not None]
    return min(known) if known else None


def meminfo_bytes(key: str, root: Path = ROOT) -> int | None:
    """A /proc/meminfo figure in bytes (the file gives kB); None where it is absent."""
    for line in read_or_empty(root / "proc/meminfo").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def cgroup_cpus(root: Path = ROOT) -> int | None:
    """Whole CPUs the tightest cgroup CPU quota allows (a quota of 1.5 CPUs runs 2 threads at
    once), from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; None without a quota."""
    limits = []
    for path in _cgroup_files(root, "", "cpu.max"):
        quota, _, period = read_or_empty(path).partition(" ")
        limits.append(_ceil_ratio(quota, period))
    for path in _cgroup_files(root, "cpu", "cpu.cfs_quota_us"):
        limits.append(_ceil_ratio(read_or_empty(path), read_or_empty(path.with_name("cpu.cfs_period_us"))))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def cgroup_memory_bytes(root: Path = ROOT) -> int | None:
    """The tightest cgroup memory limit: v2 `memory.max` or v1 `memory.limit_in_bytes` (v1's
    "unlimited" is a huge number, which the host's memory undercuts); None without one."""
    files = _cgroup_files(root, "", "memory.max") + _cgroup_files(root, "memory", "memory.limit_in_bytes")
    limits = [_positive_int(read_or_empty(path)) for path in files]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def cgroup_v2_quota(root: Path = ROOT) -> tuple[float, Path] | None:
    """The tightest cgroup v2 CPU quota in CPUs (1.5 for "150000 100000") and the cgroup folder
    that sets it; None without one."""
    quotas = []
    for path in _cgroup_files(root, "", "cpu.max"):
        quota, _, period = read_or_empty(path).partition(" ")
        q, p = _positive_int(quota), _positive_int(period)
        if q is not None and p is not None:
            quotas.append((q / p, path.parent))
    return min(quotas, key=lambda quota: quota[0]) if quotas else None


def cgroup_v2_files(name: str, root: Path = ROOT) -> list[Path]:
    """`name` in this process's cgroup v2 and in each ancestor that has it, its own cgroup first."""
    return _cgroup_files(root, "", name)


def _cgroup_files(root: Path, controller: str, name: str) -> list[Path]:
    """`name` in this process's cgroup and in each of its ancestors (a parent's limit binds its
    children), under v2's single hierarchy (controller "") or a v1 controller's. Inside a container
    /sys/fs/cgroup is often the container's own cgroup while /proc/self/cgroup names the host's
    path: that path is then absent and the walk up ends at the mount's own files."""
    mount = root / "sys/fs/cgroup" / controller
    relative = Path(_own_cgroups(root).get(controller, "/").lstrip("/"))
    folders = [mount / relative, *(mount / parent for parent in relative.parents)]
    return [folder / name for folder in folders if (folder / name).is_file()]


def _own_cgroups(root: Path) -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    paths = {}
    for line in read_or_empty(root / "proc/self/cgroup").splitlines():  # "4:memory:/a/b", "0::/a/b"
        _hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _ceil_ratio(quota: str, period: str) -> int | None:
    """ceil(quota / period) for a set quota; None for "max" (v2) or -1 (v1): no quota."""
    q, p = _positive_int(quota), _positive_int(period)
    return -(-q // p) if q is not None and p is not None else None


def _positive_int(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:  # "max", or an empty read
        return None
    return value if value > 0 else None


def read_or_empty(path: Path) -> str:
    """A file's text; "" where it is absent or unreadable."""
    try:
        return path.read_text()
    except OSError:  # absent (another OS, no cgroup controller) or unreadable: not known
        return ""
