"""Layouts on GPUs: NCCL tensor-parallel ranks decode what one GPU decodes, replicas run one per
GPU, and the energy window covers every board a layout uses (NVML, opened by PCI bus id). Each
test skips with fewer GPUs than its layout needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _setup(model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from optimizer.config import ModelConfig, TargetConfig
    from optimizer.model import resolve_model
    from optimizer.space import Candidate, TorchSettings
    from optimizer.target import detect_target

    model = resolve_model(ModelConfig(source=str(model_dir)), tmp_path)
    candidate = Candidate(TorchSettings(precision="bf16"), batch_size=4, threads=0)
    return model, candidate, detect_target(TargetConfig(kind="cuda"))


def test_torch_and_nvml_name_the_same_board(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    """A rank reports its device's PCI bus id as torch sees it; NVML opens that very board."""
    import pynvml
    import torch

    from optimizer.backends.torch_parallel.ranks import pci_bus_id

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(torch.device("cuda:0")))
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        assert str(torch.cuda.get_device_properties(0).uuid) in str(uuid)
    finally:
        pynvml.nvmlShutdown()


def test_two_nccl_ranks_decode_what_one_gpu_decodes(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    if _gpus() < 2:
        pytest.skip("tensor parallelism over NCCL needs 2 GPUs")
    import torch

    from optimizer.backends.registry import build_engine

    model, one, target = _setup(tiny_cuda_model_dir, tmp_path)
    prompts = torch.randint(0, 2048, (4, 16), generator=torch.Generator().manual_seed(0))
    outputs = []
    for candidate in (one, replace(one, tensor_parallel=2)):
        engine = build_engine(model, candidate, target, tmp_path)
        try:
            outputs.append(engine.generate(prompts, 8).token_ids)
        finally:
            engine.close()
    assert torch.equal(outputs[0], outputs[1])


def test_replicas_are_measured_on_both_boards(tiny_cuda_model_dir: Path, tmp_path: Path) -> None:
    if _gpus() < 2:
        pytest.skip("two replicas, one per GPU, need 2 GPUs")
    import torch

    from optimizer.backends.registry import build_engine
    from optimizer.measure.energy import NvmlMeter, meter_for_engine

    model, one, target = _setup(tiny_cuda_model_dir, tmp_path)
    engine = build_engine(model, replace(one, replicas=2), target, tmp_path)
    try:
        boards = engine.pci_bus_ids  # type: ignore[attr-defined]
        assert len(set(boards)) == 2
        meter = meter_for_engine(NvmlMeter([target.gpu.index]), engine)
        assert isinstance(meter, NvmlMeter) and len(meter.handles) == 2
        one_board = meter.on_boards(boards[:1])
        prompts = torch.randint(0, 2048, (4, 16), generator=torch.Generator().manual_seed(0))
        # the same work read on one board and on both: a meter of one board would pass `joules > 0`
        with meter.window() as measurement, one_board.window() as first_board:
            for _ in range(20):
                engine.generate(prompts, 32)
        assert first_board.joules > 0
        assert measurement.joules >= 1.2 * first_board.joules  # the second board's energy is in it
    finally:
        engine.close()


def test_ray_ranks_get_a_gpu_each_from_their_placement_group(
    tiny_cuda_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Ray worker builds: NCCL ranks as Ray actors, each seeing only the GPU its bundle got,
    decode what one GPU decodes and report two different boards for the meter."""
    if _gpus() < 2:
        pytest.skip("a 2-rank placement group needs 2 GPUs")
    ray = pytest.importorskip("ray", reason="ray is in the `cluster` extra")
    import torch

    from optimizer.backends.registry import build_engine
    from optimizer.backends.torch_parallel import RANKS_ENV

    model, one, target = _setup(tiny_cuda_model_dir, tmp_path)
    prompts = torch.randint(0, 2048, (4, 16), generator=torch.Generator().manual_seed(0))
    reference = build_engine(model, one, target, tmp_path)
    try:
        expected = reference.generate(prompts, 8).token_ids
    finally:
        reference.close()
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_gpus=_gpus(), include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        monkeypatch.setenv(RANKS_ENV, "ray")
        engine = build_engine(model, replace(one, tensor_parallel=2), target, tmp_path)
        try:
            assert len(set(engine.pci_bus_ids)) == 2  # type: ignore[attr-defined]
            assert torch.equal(engine.generate(prompts, 8).token_ids, expected)
        finally:
            engine.close()
    finally:
        ray.shutdown()
