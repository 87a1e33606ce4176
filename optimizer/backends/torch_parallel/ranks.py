"""What runs inside one rank process: pin, join the group, load the shard, serve commands.

Every rank of a group receives the same command; each runs it (tensor-parallel ranks meet in the
model's collectives) and the group's rank 0 sends the result back. A rank that fails sends its
error and exits non-zero; the parent then tears the whole candidate down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from optimizer.backends.torch.settings import TorchSettings
from optimizer.model import ModelSpec
from optimizer.processes import die_with_parent


@dataclass(frozen=True)
class GroupPlan:
    """One replica: `degree` ranks. `cores[r]`: the CPU cores rank r is pinned to (empty: not
    pinned); `devices[r]`: its CUDA device as the parent sees it (empty on a CPU target, and where
    a scheduler gave each rank its GPU: `assigned_gpu`, the rank's only visible device, as Ray
    does). Rank 0 listens for the group at 127.0.0.1:`port`: a group's ranks share a node."""

    replica: int
    degree: int
    port: int
    threads: int
    cores: tuple[tuple[int, ...], ...]
    devices: tuple[int, ...]
    model: ModelSpec
    settings: TorchSettings
    timeout_seconds: float
    assigned_gpu: bool = False


def rank_main(local_rank: int, plan: GroupPlan, commands: list[Any], results: Any) -> None:
    """The entry point `torch.multiprocessing.start_processes` runs in each spawned rank."""
    die_with_parent(signal.SIGKILL)  # no orphaned rank, however early its parent dies
    try:
        engine = start_rank(local_rank, plan)
        results.put(("ready", plan.replica, local_rank, ready_info(engine)))
    except BaseException:
        results.put(("error", plan.replica, local_rank, traceback.format_exc()))
        raise
    try:
        _serve(local_rank, plan, engine, commands[local_rank], results)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _serve(local_rank: int, plan: GroupPlan, engine: Any, commands: Any, results: Any) -> None:
    while True:
        command, args = commands.get()
        if command == "close":
            return
        try:
            output = getattr(engine, command)(*args)
        except BaseException:
            results.put(("error", plan.replica, local_rank, traceback.format_exc()))
            raise
        if local_rank == 0:
            results.put(("ok", plan.replica, local_rank, output))


def start_rank(local_rank: int, plan: GroupPlan) -> Any:
    """Pin, join the group (a tensor-parallel degree > 1), load: the rank's engine."""
    if plan.cores and plan.cores[local_rank]:
        pin_process(plan.cores[local_rank])
    if plan.devices:
        # Before CUDA starts: this group's GPUs, in rank order, so that cuda:<local rank> is ours
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = visible.split(",") if visible else [str(i) for i in range(max(plan.devices) + 1)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names[d] for d in plan.devices)
    import torch

    if plan.threads:
        torch.set_num_threads(plan.threads)
    # a rank given its own GPU sees it alone, as cuda:0 (transformers binds the TP device by LOCAL_RANK)
    cuda_index = 0 if plan.assigned_gpu else local_rank
    gpu = bool(plan.devices) or plan.assigned_gpu
    device = f"cuda:{cuda_index}" if gpu else "cpu"
    if plan.degree > 1:
        import torch.distributed as dist

        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(plan.port),
            RANK=str(local_rank),
            LOCAL_RANK=str(cuda_index),
            WORLD_SIZE=str(plan.degree),
            LOCAL_WORLD_SIZE=str(1 if plan.assigned_gpu else plan.degree),
        )
        if gpu:
            torch.cuda.set_device(cuda_index)
        dist.init_process_group(
            "nccl" if gpu else "gloo",
            rank=local_rank,
            world_size=plan.degree,
            timeout=timedelta(seconds=plan.timeout_seconds),
        )
    return _load(plan, device)


def pin_process(cores: tuple[int, ...]) -> None:
    """Pin every thread of this process to `cores` (a Ray actor has its own threads already; the
    ones started later inherit it). Cores this process may not use fail the rank: the kernel would
    pin it to the rest, or refuse, and the candidate be measured on other cores than it records."""
    allowed = os.sched_getaffinity(0)
    if not set(cores) <= allowed:
        raise RuntimeError(
            f"cannot pin this rank to cores {sorted(cores)}: this process may use only "
            f"{sorted(allowed)}, not the cores its worker chose them from"
        )
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(thread), cores)


def _load(plan: GroupPlan, device: str) -> Any:
    """One replica: the torch backend's own load and quantization; a tensor-parallel rank: its
    shard, by the model's tensor-parallel plan (the rules allow no quantization there)."""
    from optimizer.backends.torch.backend import DTYPES, TorchEngine, load_hf_model, quantize_weights

    settings = plan.settings
    if plan.degree == 1:
        model = load_hf_model(plan.model, settings.precision, settings.attention, device)
        quantize_weights(model, settings, plan.model)
        return TorchEngine(model, settings, device)
    from transformers import AutoModelForCausalLM, DistributedConfig

    sharded: Any = AutoModelForCausalLM.from_pretrained(
        str(plan.model.path),
        dtype=DTYPES[settings.precision],
        attn_implementation=settings.attention,
        trust_remote_code=plan.model.trust_remote_code,
        distributed_config=DistributedConfig(tp_plan="auto", tp_size=plan.degree),
    )
    return TorchEngine(sharded.eval(), settings, device)


def ready_info(engine: Any) -> dict[str, Any]:
    """The rank's pid and, on a GPU, the PCI bus id of its device (NVML opens boards by it)."""
    return {
        "pid": os.getpid(),
        "pci_bus_id": pci_bus_id(engine.device) if engine.device.type == "cuda" else None,
    }


def pci_bus_id(device: Any) -> str:
    """The PCI bus id of a CUDA device in NVML's form (domain:bus:device.function)."""
    import torch

    props: Any = torch.cuda.get_device_properties(device)  # pci_* are missing from the stubs
    return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
