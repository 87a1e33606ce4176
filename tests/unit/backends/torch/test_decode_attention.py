"""sdpa_gqa: decode queries packed per KV head give the same attention as repeating K/V."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.backends.torch import decode_attention


@pytest.fixture(scope="module")
def tiny_gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,  # 4 query heads per KV head
        vocab_size=256,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # large weights: the greedy tokens depend on the context
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("tiny-gqa")
    model.save_pretrained(path)
    return path


def _load(path: Path, attention: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    decode_attention.register()
    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attention).eval()


def test_the_packed_decode_step_matches_repeated_kv_eager_and_compiled(tiny_gqa_dir: Path) -> None:
    from transformers import StaticCache

    from optimizer.backends.torch.compiling import cache_argument

    ids = torch.randint(0, 256, (3, 10))
    logits = {}
    for attention in ("sdpa", decode_attention.NAME):
        model = _load(tiny_gqa_dir, attention)
        assert model.config._attn_implementation == attention
        for compiled in (False, True):
            cache = StaticCache(config=model.config, max_cache_len=16)
            with torch.inference_mode():
                cache_kw = {cache_argument(model): cache}
                model(input_ids=ids, cache_position=torch.arange(10), **cache_kw)

                def step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
                    out = model(input_ids=token, cache_position=position, **cache_kw)  # noqa: B023
                    return out.logits

                run = torch.compile(step, dynamic=False) if compiled else step
                logits[attention, compiled] = run(ids[:, -1:], torch.tensor([10]))
    reference = logits["sdpa", False]
    for key, value in logits.items():
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-5, msg=str(key))


def test_generate_gives_the_same_tokens(tiny_gqa_dir: Path) -> None:
    ids = torch.randint(0, 256, (2, 6))
    tokens = []
    for attention in ("sdpa", decode_attention.NAME):
        model = _load(tiny_gqa_dir, attention)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                min_new_tokens=8,
                do_sample=False,
                cache_implementation="static",
                disable_compile=True,
                pad_token_id=0,
            )
        tokens.append(out[:, 6:])
    assert torch.equal(tokens[0], tokens[1])
    assert len(set(tokens[0].flatten().tolist())) > 1  # the check has tokens to disagree on


def test_multi_token_queries_take_transformers_sdpa_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.integrations.sdpa_attention as sdpa

    seen: list[int] = []

    def spy(module, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(query.shape[2])
        return torch.zeros(1), None

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    module = torch.nn.Module()
    module.num_key_value_groups = 4  # type: ignore[assignment]
    query = torch.randn(1, 8, 5, 16)
    key = value = torch.randn(1, 2, 5, 16)
    decode_attention.sdpa_gqa_attention(module, query, key, value, None)
    assert seen == [5]
