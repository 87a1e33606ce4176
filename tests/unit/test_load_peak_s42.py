"""The memory prefilter counts what torch builds really hold: quantized weights load unquantized
(load_hf_model puts the whole model on the device before quantize_weights), and transformers'
QuantizedCache keeps each sequence's newest tokens unquantized beside per-group scales."""

from __future__ import annotations

import inspect

import pytest

from optimizer.backends.registry import spec_for
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import WorkloadConfig
from optimizer.model_files import ModelShape
from optimizer.search.prefilter import RUNTIME_OVERHEAD_BYTES, estimate_memory_bytes, memory_fit_reason
from optimizer.space import Candidate
from optimizer.target import GIB
from unit.factories import target_spec

LLAMA_70B = ModelShape(80, 8192, 64, 8, 128, 128256, 70_553_706_496, tied_embeddings=False)
LLAMA_8B = ModelShape(32, 4096, 32, 8, 128, 128256, 8_030_261_248, tied_embeddings=False)
SHORT = WorkloadConfig(prompt_tokens=64, max_new_tokens=32)  # 96 tokens: inside the residual window
LONG = WorkloadConfig(prompt_tokens=8192, max_new_tokens=512)


@pytest.mark.parametrize(
    "settings",
    [
        TorchSettings("bf16", "int8-weight"),
        ContinuousBatchingSettings(precision="bf16", quantization="int8-weight"),
    ],
    ids=["torch", "torch-cb"],
)
def test_a_quantized_70b_does_not_fit_an_h100_it_must_load_in_bf16_first(settings: object) -> None:
    candidate = Candidate(settings, batch_size=1, threads=0)  # type: ignore[arg-type]
    h100 = target_spec(kind="cuda")  # 80 GiB, 72 GiB usable
    running = estimate_memory_bytes(candidate, LLAMA_70B, SHORT)
    assert running < 72 * GIB  # int8 weights alone would fit
    reason = memory_fit_reason(candidate, LLAMA_70B, h100, SHORT)
    assert reason is not None
    assert reason.startswith(
        f"needs ~{(LLAMA_70B.num_parameters * 2 + RUNTIME_OVERHEAD_BYTES) / GIB:.1f} GiB"
    )
    assert (
        f"while loading (all weights unquantized before it quantizes them; ~{running / GIB:.1f} GiB" in reason
    )
    assert reason.endswith("> 72.0 GiB usable per device of the memory budget (target.memory_gib)")


def test_the_load_peak_is_every_weight_at_the_activation_width() -> None:
    from optimizer.search.prefilter import load_peak_bytes

    for quantization in ("int8-weight", "int4-weight", "fp8"):
        candidate = Candidate(TorchSettings("bf16", quantization), batch_size=1, threads=0)
        assert load_peak_bytes(candidate, LLAMA_8B) == LLAMA_8B.num_parameters * 2 + RUNTIME_OVERHEAD_BYTES
    # unquantized builds hold what they load: the running footprint is the larger
    plain = Candidate(TorchSettings("bf16"), batch_size=1, threads=0)
    assert load_peak_bytes(plain, LLAMA_8B) < estimate_memory_bytes(plain, LLAMA_8B, SHORT)


def test_an_8b_int8_fits_an_h100_and_on_a_cpu_its_replicas_load_together() -> None:
    int8 = Candidate(TorchSettings("bf16", "int8-weight"), batch_size=1, threads=0)
    assert memory_fit_reason(int8, LLAMA_8B, target_spec(kind="cuda"), SHORT) is None
    cpu = target_spec(memory_bytes=32 * GIB)  # 28.8 GiB usable, shared by the processes
    one = Candidate(TorchSettings("bf16", "int8-weight"), batch_size=2, threads=2)
    assert memory_fit_reason(one, LLAMA_8B, cpu, SHORT) is None  # ~15.5 GiB to load
    two = Candidate(TorchSettings("bf16", "int8-weight"), batch_size=2, threads=2, replicas=2)
    reason = memory_fit_reason(two, LLAMA_8B, cpu, SHORT)
    assert reason is not None and "while loading" in reason and "of the memory budget" in reason


def test_the_running_numbers_the_roofline_reads_are_unchanged() -> None:
    settings = TorchSettings("bf16", "int8-weight", kv_cache="hqq-4")
    spec = spec_for(settings)
    moved, fp = spec.moved_bytes(settings, 32), spec.footprint(settings, 32)
    assert (moved.weight_bytes, moved.kv_bytes) == (1.0, 0.5)
    assert fp.weight_bytes == 1.0 and fp.load_weight_bytes == 2.0


def test_a_short_context_stays_in_the_quantized_caches_full_precision_window() -> None:
    for kv_cache in ("quanto-4", "hqq-4", "hqq-2"):
        quantized = Candidate(TorchSettings("bf16", kv_cache=kv_cache), batch_size=64, threads=0)
        dynamic = Candidate(TorchSettings("bf16"), batch_size=64, threads=0)
        assert estimate_memory_bytes(quantized, LLAMA_8B, SHORT) == estimate_memory_bytes(
            dynamic, LLAMA_8B, SHORT
        )


@pytest.mark.parametrize("kv_cache, bits", [("hqq-4", 4), ("quanto-2", 2), ("hqq-8", 8)])
def test_a_long_context_counts_the_residual_window_and_the_group_scales(kv_cache: str, bits: int) -> None:
    quantized = Candidate(TorchSettings("bf16", kv_cache=kv_cache), batch_size=8, threads=0)
    dynamic = Candidate(TorchSettings("bf16"), batch_size=8, threads=0)
    saved = estimate_memory_bytes(dynamic, LLAMA_8B, LONG) - estimate_memory_bytes(quantized, LLAMA_8B, LONG)
    # 128 tokens per sequence stay bf16; the rest hold `bits` plus a bf16 scale and zero per 64
    quantized_tokens = 8 * (8704 - 128)
    expected = quantized_tokens * LLAMA_8B.kv_bytes_per_token(2 - bits / 8 - 2 * 2 / 64)
    assert saved == pytest.approx(expected, abs=2)


def test_the_quantized_cache_defaults_are_the_installed_transformers() -> None:
    from transformers.cache_utils import QuantizedLayer

    from optimizer.backends.torch.spec import QUANTIZED_GROUP_SIZE, QUANTIZED_RESIDUAL_TOKENS

    parameters = inspect.signature(QuantizedLayer.__init__).parameters
    assert parameters["residual_length"].default == QUANTIZED_RESIDUAL_TOKENS
    assert parameters["q_group_size"].default == QUANTIZED_GROUP_SIZE
