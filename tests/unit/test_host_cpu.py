"""host_cpu: the CPU's name and bf16 from /proc/cpuinfo, and a container's cgroup CPU and memory
limits, all read under a fake root."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import host_cpu
from optimizer.host_cpu import (
    arm_core_name,
    cgroup_cpus,
    cgroup_memory_bytes,
    cpu_identity,
    usable_cores,
    usable_memory_bytes,
)

GIB = 1 << 30
N1_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
)
V1_FEATURES = N1_FEATURES + " sha3 sm3 sm4 sve asimdfhm svei8mm svebf16 i8mm bf16 dgh rng"


def arm_cpuinfo(*cores: tuple[str, str, str]) -> str:
    """aarch64 /proc/cpuinfo: one block per (implementer, part, features), no "model name"."""
    return "".join(
        f"processor\t: {n}\nBogoMIPS\t: 243.75\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
        f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
        for n, (implementer, part, features) in enumerate(cores)
    )


def x86_cpuinfo(model: str, flags: str) -> str:
    return "".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
        for n in range(2)
    )


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_graviton2_and_graviton3_are_told_apart() -> None:
    """Neoverse-N1 (Graviton2) and Neoverse-V1 (Graviton3): different names, and V1's bf16."""
    graviton2 = arm_cpuinfo(*[("0x41", "0xd0c", N1_FEATURES)] * 2)
    graviton3 = arm_cpuinfo(*[("0x41", "0xd40", V1_FEATURES)] * 2)
    assert cpu_identity(graviton2) == ("Arm Neoverse-N1", False)
    assert cpu_identity(graviton3) == ("Arm Neoverse-V1", True)


@pytest.mark.parametrize(
    ("implementer", "part", "name"),
    [
        ("0x41", "0xd49", "Arm Neoverse-N2"),
        ("0x41", "0xd4f", "Arm Neoverse-V2"),
        ("0x41", "0xd08", "Arm Cortex-A72"),
        ("0x41", "0xd0b", "Arm Cortex-A76"),
        ("0x41", "0xd99", "arm 0x41 part 0xd99"),  # unknown parts still differ
        ("0x41", "0xd98", "arm 0x41 part 0xd98"),
        ("0x61", "0x023", "arm 0x61 part 0x023"),
        ("", "bogus", "arm ? part bogus"),
    ],
)
def test_arm_cores_are_named_from_implementer_and_part(implementer: str, part: str, name: str) -> None:
    assert arm_core_name(implementer, part) == name


def test_big_little_names_each_kind_of_core() -> None:
    text = arm_cpuinfo(("0x41", "0xd05", "fp"), ("0x41", "0xd05", "fp"), ("0x41", "0xd0b", "fp"))
    assert cpu_identity(text) == ("Arm Cortex-A55 + Arm Cortex-A76", False)


@pytest.mark.parametrize(
    ("flags", "bf16"),
    [("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)],
)
def test_x86_names_and_bf16_are_as_before(flags: str, bf16: bool) -> None:
    """The name is in the target fingerprint: x86 keeps its "model name" verbatim."""
    model = "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu_identity(x86_cpuinfo(model, flags)) == (model, bf16)


def test_no_cpuinfo_names_nothing() -> None:
    assert cpu_identity("") == (None, False)


def test_cgroup_v2_limits_are_read(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "200000 100000\n",
            "sys/fs/cgroup/memory.max": f"{4 * GIB}\n",
        },
    )
    assert cgroup_cpus(root) == 2
    assert cgroup_memory_bytes(root) == 4 * GIB


def test_a_fractional_cpu_quota_rounds_up(tmp_path: Path) -> None:
    """1.5 CPUs of quota still run two threads at once."""
    root = write(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert cgroup_cpus(root) == 2


def test_no_cgroup_limit_is_none(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/memory.max": "max\n",
        },
    )
    assert (cgroup_cpus(root), cgroup_memory_bytes(root)) == (None, None)
    assert (cgroup_cpus(tmp_path / "nothing"), cgroup_memory_bytes(tmp_path / "nothing")) == (None, None)


def test_the_own_cgroup_and_its_parents_bind(tmp_path: Path) -> None:
    """The process's own cgroup (from /proc/self/cgroup) and every ancestor: the tightest wins."""
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/pod/job\n",
            "sys/fs/cgroup/pod/cpu.max": "400000 100000\n",
            "sys/fs/cgroup/pod/job/cpu.max": "max 100000\n",
            "sys/fs/cgroup/pod/memory.max": f"{8 * GIB}\n",
            "sys/fs/cgroup/pod/job/memory.max": f"{3 * GIB}\n",
            "sys/fs/cgroup/other/cpu.max": "100000 100000\n",  # a sibling's limit is not ours
        },
    )
    assert cgroup_cpus(root) == 4
    assert cgroup_memory_bytes(root) == 3 * GIB


def test_a_host_path_absent_in_the_container_falls_back_to_the_mount(tmp_path: Path) -> None:
    """Without a cgroup namespace /proc/self/cgroup names the host's path while /sys/fs/cgroup is
    the container's own cgroup: its root files are the limits."""
    root = write(
        tmp_path,
        {"proc/self/cgroup": "0::/docker/abc123\n", "sys/fs/cgroup/cpu.max": "300000 100000\n"},
    )
    assert cgroup_cpus(root) == 3


def test_cgroup_v1_limits_are_read(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/job/memory.limit_in_bytes": f"{6 * GIB}\n",
            # v1's "no limit": -1 quota, a page-rounded 2**63 for memory
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    assert cgroup_cpus(root) == 3
    assert cgroup_memory_bytes(root) == 6 * GIB


def test_usable_cores_and_memory_take_the_container_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 cores in the affinity and 64 GiB of MemTotal, in a container of 2 CPUs and 4 GiB."""
    monkeypatch.setattr(host_cpu.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root = write(tmp_path, {"proc/meminfo": f"MemTotal:       {64 * GIB // 1024} kB\nMemFree: 1 kB\n"})
    assert (usable_cores(root), usable_memory_bytes(root)) == (64, 64 * GIB)
    write(
        root,
        {
            "proc/self/cgroup": "0::/\n",
            "sys/fs/cgroup/cpu.max": "200000 100000\n",
            "sys/fs/cgroup/memory.max": f"{4 * GIB}\n",
        },
    )
    assert (usable_cores(root), usable_memory_bytes(root)) == (2, 4 * GIB)
    # a quota above the affinity (a cpuset narrows it) does not add cores; a limit above the host's
    # memory does not add memory
    write(root, {"sys/fs/cgroup/cpu.max": "12800000 100000\n", "sys/fs/cgroup/memory.max": f"{512 * GIB}\n"})
    assert (usable_cores(root), usable_memory_bytes(root)) == (64, 64 * GIB)
