"""An offloaded KV cache keeps two layers on the device: a one-layer model keeps all of it, once."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch.spec import TorchSpec
from optimizer.config import WorkloadConfig
from optimizer.search.prefilter import estimate_memory_bytes
from unit.factories import SMOLLM2_SHAPE, torch_candidate


@pytest.mark.parametrize(("layers", "share"), [(1, 1.0), (2, 1.0), (4, 0.5), (30, 2 / 30)])
def test_the_on_device_share_never_exceeds_the_whole_cache(layers: int, share: float) -> None:
    """Before: 2 / num_layers, 2.0 for one layer (twice the cache it offloads)."""
    settings = TorchSettings(kv_cache="offloaded")
    assert TorchSpec().footprint(settings, layers).kv_on_device_fraction == pytest.approx(share)
    assert TorchSpec().moved_bytes(settings, layers).kv_on_device_fraction == pytest.approx(share)


def test_a_one_layer_offloaded_cache_needs_no_more_memory_than_a_resident_one() -> None:
    shape = dataclasses.replace(SMOLLM2_SHAPE, num_layers=1)
    workload = WorkloadConfig(prompt_tokens=1024, max_new_tokens=32)
    resident = estimate_memory_bytes(torch_candidate(batch_size=64, kv_cache="dynamic"), shape, workload)
    offloaded = estimate_memory_bytes(torch_candidate(batch_size=64, kv_cache="offloaded"), shape, workload)
    assert offloaded == resident
