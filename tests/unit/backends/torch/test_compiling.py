"""compile_layers: the decoders' layers through one compiled graph (regional compilation), on the
CPU against HF greedy decoding; its graphs do not multiply with the model's depth."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from optimizer.backends.torch import compiling
from optimizer.backends.torch.graph_loop import GraphDecoder
from optimizer.backends.torch.slot_decoder import SlotDecoder
from unit.backends.torch.test_slot_loop import VOCAB, greedy, tiny_llama


def layer_graphs() -> int:
    """The graphs dynamo holds for the one compiled layer function (every layer, every shape)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(compiling.run_layer.__code__))


def serve_slots(model: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Two requests through 10 compiled-by-layer slots with a prefix store: slot 0 alone, slot 1
    joining, then the second prompt again from the store with its first 8 tokens cached; spans of
    8 columns. Returns (answers, their prompts)."""
    generator = torch.Generator().manual_seed(3)
    p = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (7, 12)]
    decoder = SlotDecoder(
        model, 10, 32, torch.device("cpu"), compiled=True, key_span_step=8, stored=1, compile_layers=True
    )
    got: list[list[int]] = [[], [], []]
    with torch.no_grad():
        decoder.compile_prefills()
        got[0].append(int(decoder.prefill([0], [p[0]])[0]))
        for _ in range(3):
            decoder.run_step(1, len(p[0]) + len(got[0]))
            got[0].append(int(decoder.tokens[0]))
        got[1].append(int(decoder.prefill([1], [p[1]])[0]))
        decoder.cache.copy_columns(1, 10, len(p[1]))  # slot 1's prompt into the store row
        for _ in range(4):
            decoder.run_step(2, max(len(p[i]) + len(got[i]) for i in (0, 1)))
            for slot in (0, 1):
                got[slot].append(int(decoder.tokens[slot]))
        decoder.cache.copy_columns(10, 2, 8)
        got[2].append(int(decoder.prefill([2], [p[1]], [8])[0]))
        decoder.run_step(10, 32)  # the largest size and span
        got[2].append(int(decoder.tokens[2]))
    return got, [p[0], p[1], p[1]]


def test_slot_layers_share_one_graph_per_kind_whatever_the_depth() -> None:
    """2 and 5 layers, each shape of step (1, 2, 10 rows; spans 8-32) and prefill (one row, more,
    after a copied prefix): the same graphs serve every layer, and every answer is HF greedy's."""
    counts = []
    for layers in (2, 5):
        torch._dynamo.reset()
        model = tiny_llama(layers=layers)
        got, prompts = serve_slots(model)
        for answer, prompt in zip(got, prompts, strict=True):
            assert answer == greedy(model, prompt, len(answer))
        counts.append(layer_graphs())
    # the step (rows and span dynamic) and the four kinds of prefill
    assert counts == [5, 5]


def test_the_captured_loops_layers_share_their_graphs_and_keep_greedy_tokens() -> None:
    """GraphDecoder with compile_layers: a prefill and steps over a transformers StaticCache."""
    counts = []
    for layers in (2, 5):
        torch._dynamo.reset()
        model = tiny_llama("sdpa_gqa" if layers == 5 else "sdpa", layers)
        prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
        decoder = GraphDecoder(model, 2, 6, 4, torch.device("cpu"), compiled=True, compile_layers=True)
        with torch.no_grad():
            for _ in range(2):  # generate() prefills again after its capture
                decoder.prefill(prompt)
                for _ in range(3):
                    decoder.step()
            want = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(decoder.output[:, :4], want[:, 6:])
        counts.append(layer_graphs())
    assert counts == [3, 3], counts  # first prefill (allocating the cache), step, prefill


def test_static_fp8_layers_share_their_graphs_too() -> None:
    """fp8-static keeps each Linear's scales in buffers, graph inputs like the weights: no layer's
    values become constants of the graph. Compiled by layer, the same tokens as eager."""
    from optimizer.backends.torch.fp8_static import quantize_fp8_static

    counts = []
    for layers in (2, 5):
        torch._dynamo.reset()
        model = tiny_llama(layers=layers).to(torch.bfloat16)
        quantize_fp8_static(
            model, torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
        )
        prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
        outputs = []
        for compiled in (False, True):
            decoder = GraphDecoder(
                model, 2, 6, 6, torch.device("cpu"), compiled=compiled, compile_layers=True
            )
            with torch.inference_mode():
                decoder.prefill(prompt)
                for _ in range(5):
                    decoder.step()
            outputs.append(decoder.output[:, :6])
        assert torch.equal(outputs[0], outputs[1])
        counts.append(layer_graphs())
    assert counts == [2, 2]  # prefill, step


def test_a_model_whose_forward_is_more_than_its_layers_is_refused() -> None:
    """Granite multiplies its embeddings inside its forward: running its layers one by one would
    differ. (Gemma, whose embedding module scales itself, passes the check.)"""
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        embedding_multiplier=12.0,
    )
    model = GraniteForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    with pytest.raises(ValueError, match="compile_layers: GraniteForCausalLM's forward is more than"):
        SlotDecoder(model, 2, 32, torch.device("cpu"), compiled=True, compile_layers=True)


def test_a_model_without_a_rotary_decoder_is_refused_by_name() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match="GPT2Model has no embed_tokens, rotary_emb, layers, norm"):
        compiling.LayerwiseForward(model, compiled=True)
