"""The torch loops free a decoder's KV regions (and a closed engine its model) as soon as they drop
them, without waiting for Python's cyclic GC: a reference cycle there kept the old regions beside
the new ones through a rebuild, and a closed candidate's weights into the next one's build."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from optimizer.backends.torch import backend, slot_server
from optimizer.backends.torch.backend import TorchEngine
from optimizer.backends.torch.graph_loop import GraphDecoder
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch.slot_decoder import SlotDecoder
from optimizer.backends.torch.slot_server import SlotEngine

VOCAB = 300


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def prompts(rows: int, tokens: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, tokens), generator=torch.Generator().manual_seed(0))


def test_a_dropped_slot_decoder_frees_its_regions(no_cyclic_gc: None) -> None:
    decoder = SlotDecoder(tiny_llama(), 2, 32, torch.device("cpu"))
    with torch.inference_mode():
        decoder.prefill([0], prompts(1, 5).tolist())
        decoder.step()
    keys = weakref.ref(decoder.cache.all_keys)
    del decoder
    assert keys() is None


def test_a_growing_rebuild_frees_the_old_regions_before_building_the_new(
    no_cyclic_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = SlotEngine(tiny_llama(), 2, "cpu", prefix_sharing=True)
    try:
        engine.generate(prompts(2, 6), 4)
        assert engine.decoder is not None
        old = weakref.ref(engine.decoder.cache.all_keys)
        alive_at_build: list[bool] = []

        class Spy(SlotDecoder):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                alive_at_build.append(old() is not None)
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(slot_server, "SlotDecoder", Spy)
        engine.reserve(600)
        assert alive_at_build == [False]
    finally:
        engine.close()


def test_close_frees_the_regions_and_the_model(no_cyclic_gc: None) -> None:
    model = tiny_llama()
    engine = SlotEngine(model, 2, "cpu")
    engine.generate(prompts(2, 6), 4)
    assert engine.decoder is not None
    keys, weights = weakref.ref(engine.decoder.cache.all_keys), weakref.ref(model)
    engine.close()
    del model
    assert keys() is None
    assert weights() is None


def test_a_new_graph_shape_frees_the_previous_shapes_cache_before_building(
    no_cyclic_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TorchEngine(tiny_llama(), TorchSettings(loop="graph"), "cpu")
    decoder = engine.graph_decoder(2, 6, 4)
    with torch.inference_mode():
        decoder.prefill(prompts(2, 6))
        decoder.step()
    old = weakref.ref(decoder.output), weakref.ref(decoder.cache.layers[0].keys)
    del decoder
    alive_at_build: list[bool] = []

    class Spy(GraphDecoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            alive_at_build.append(any(ref() is not None for ref in old))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(backend, "GraphDecoder", Spy)
    engine.graph_decoder(2, 8, 4)
    assert alive_at_build == [False]
