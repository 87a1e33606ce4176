"""ContinuousBatchingEngine on a tiny random Llama (CPU, fp32): greedy tokens equal HF generate's,
the manager and its thread are reused, latencies are per request, and close() stops the thread."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.openmp import _openmp_pause, release_openmp_threads
from optimizer.backends.torch_cb.engine import ContinuousBatchingEngine
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

VOCAB = 49152
PROMPT_TOKENS = 8
NEW_TOKENS = 6
SETTINGS = ContinuousBatchingSettings(precision="fp32", page_size=16)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    # The saved weights are so small that the model repeats one token whatever the context; larger
    # ones make every token depend on the whole context, so a wrong KV cache changes the tokens.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))


def static_greedy(model: Any, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        pad_token_id=0,
    )
    return out[:, prompts.shape[1] :]


@pytest.fixture(scope="module")
def reference(hf_model: Any, prompts: torch.Tensor) -> torch.Tensor:
    tokens = static_greedy(hf_model, prompts, NEW_TOKENS)
    assert len({tuple(row) for row in tokens.tolist()}) == 3  # distinct rows: row order is tested
    return tokens


@pytest.fixture
def engine(hf_model: Any) -> Iterator[ContinuousBatchingEngine]:
    engine = ContinuousBatchingEngine(hf_model, SETTINGS, "cpu", max_requests=3, max_sequence_tokens=64)
    yield engine
    engine.close()


def test_greedy_tokens_equal_static_generate(engine, prompts, reference) -> None:
    gen = engine.generate(prompts, NEW_TOKENS)
    assert gen.token_ids is not None
    assert gen.token_ids.dtype == torch.int64
    assert gen.token_ids.device.type == "cpu"
    assert torch.equal(gen.token_ids, reference)
    assert (gen.batch_size, gen.new_tokens, gen.output_tokens) == (3, NEW_TOKENS, 3 * NEW_TOKENS)
    assert gen.request_latencies is not None
    assert len(gen.request_latencies) == 3
    for ttft, tpot in gen.request_latencies:
        assert 0 < ttft <= gen.total_seconds
        assert tpot >= 0
    assert gen.ttft_seconds == max(ttft for ttft, _ in gen.request_latencies)
    assert gen.latencies() == list(gen.request_latencies)


def test_manager_and_thread_are_reused(engine, prompts, reference) -> None:
    first = engine.generate(prompts, NEW_TOKENS)
    manager = engine._manager
    thread = manager._generation_thread
    assert thread.is_alive()
    second = engine.generate(prompts, NEW_TOKENS)
    assert engine._manager is manager
    assert manager._generation_thread is thread
    assert torch.equal(first.token_ids, second.token_ids)
    assert torch.equal(second.token_ids, reference)


def test_requests_beyond_max_requests_queue(hf_model, prompts) -> None:
    # five requests through two slots: they queue, and come back in row order
    rows = torch.cat([prompts, prompts[:2].flip(1)])
    engine = ContinuousBatchingEngine(hf_model, SETTINGS, "cpu", max_requests=2, max_sequence_tokens=64)
    try:
        gen = engine.generate(rows, 4)
    finally:
        engine.close()
    assert torch.equal(gen.token_ids, static_greedy(hf_model, rows, 4))
    assert gen.request_latencies is not None and len(gen.request_latencies) == 5


def test_eos_does_not_stop_a_request(hf_model, prompts, reference) -> None:
    eos = int(reference[0, 1])  # row 0 "ends" at its second token
    saved = hf_model.config.eos_token_id, hf_model.generation_config.eos_token_id
    hf_model.config.eos_token_id = hf_model.generation_config.eos_token_id = eos
    engine = ContinuousBatchingEngine(hf_model, SETTINGS, "cpu", max_requests=3, max_sequence_tokens=64)
    try:
        gen = engine.generate(prompts, NEW_TOKENS)
    finally:
        engine.close()
        hf_model.config.eos_token_id, hf_model.generation_config.eos_token_id = saved
    assert gen.token_ids is not None and gen.token_ids.shape == (3, NEW_TOKENS)
    assert torch.equal(gen.token_ids, reference)


def test_close_twice_stops_the_thread(hf_model, prompts) -> None:
    engine = ContinuousBatchingEngine(hf_model, SETTINGS, "cpu", max_requests=3, max_sequence_tokens=64)
    engine.generate(prompts, 2)
    thread = engine._manager._generation_thread
    engine.close()
    assert not thread.is_alive()
    assert engine._manager is None and engine.model is None
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(prompts, 2)
    assert hf_model.config._attn_implementation == "sdpa"  # the model is left as it came


def test_score_before_and_after_generate(engine, hf_model, prompts) -> None:
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = hf_model(input_ids=ids).logits
    before = engine.score(ids)
    assert before.shape == (2, 11, VOCAB)
    assert before.dtype == torch.float32 and before.device.type == "cpu"
    torch.testing.assert_close(before, expected)
    engine.generate(prompts, 2)
    torch.testing.assert_close(engine.score(ids), expected)  # while the loop thread is running


def test_a_dead_loop_thread_raises(hf_model, prompts, monkeypatch) -> None:
    engine = ContinuousBatchingEngine(
        hf_model, SETTINGS, "cpu", max_requests=3, max_sequence_tokens=64, result_timeout_seconds=5
    )
    try:
        engine.generate(prompts, 2)

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("device lost")

        monkeypatch.setattr(hf_model, "forward", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            engine.generate(prompts, 2)
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match="thread stopped"):
            engine.generate(prompts, 2)
    finally:
        monkeypatch.undo()
        engine.close()


def test_a_longer_request_regrows_the_cache(engine, hf_model, prompts) -> None:
    engine.generate(prompts, 2)
    small = engine._manager
    assert engine.sequence_tokens == 64  # max_sequence_tokens, a multiple of the 16-token page
    gen = engine.generate(prompts, 60)  # 8 + 60 tokens do not fit in 64
    assert engine._manager is not small and not small.is_running()
    assert engine.sequence_tokens == 80
    assert torch.equal(gen.token_ids, static_greedy(hf_model, prompts, 60))


def test_rejects_bad_sizes_and_never_cuts_the_batch() -> None:
    with pytest.raises(ValueError, match="max_requests"):
        ContinuousBatchingEngine(None, SETTINGS, "cpu", max_requests=0)
    # a token budget below the batch would make transformers cut the batch to it
    assert ContinuousBatchingEngine(None, SETTINGS, "cpu", max_requests=300).max_batch_tokens == 300


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds the OpenMP runtime in /proc/self/maps"
)
def test_releases_the_callers_openmp_threads() -> None:
    assert _openmp_pause() is not None  # torch's libgomp
    release_openmp_threads()
    a = torch.ones(256, 256)
    assert torch.equal(a @ a, torch.full((256, 256), 256.0))  # the team comes back on demand


def test_config_on_cuda_uses_graphs_and_compile(hf_model) -> None:
    # only builds the config: nothing touches CUDA
    compiled = ContinuousBatchingSettings(precision="fp32", compile=True, page_size=256)
    cuda = ContinuousBatchingEngine(
        hf_model, compiled, "cuda:0", max_requests=8
    )._continuous_batching_config()
    assert cuda.use_cuda_graph is True
    assert cuda.default_compile_level == 1
    assert cuda.max_requests_per_batch == 8
    assert cuda.auto_switch_to_flash is False and cuda.allow_block_sharing is False
    assert cuda.safety_margin == 0.0
    assert cuda.num_blocks == 8  # eight requests of one 256-token page
    cpu = ContinuousBatchingEngine(hf_model, SETTINGS, "cpu", max_requests=8)._continuous_batching_config()
    assert cpu.use_cuda_graph is False
    assert cpu.default_compile_level == 0


def test_the_cache_budget_and_sharing_come_from_the_settings(hf_model) -> None:
    settings = ContinuousBatchingSettings(
        precision="fp32", page_size=16, kv_cache_tokens=1000, prefix_sharing=True
    )
    config = ContinuousBatchingEngine(hf_model, settings, "cpu", max_requests=4)._continuous_batching_config()
    assert config.num_blocks == 63  # ceil(1000 / 16)
    assert config.allow_block_sharing is True
    assert config.page_size == 16


def test_serving_submit_and_collect_give_token_times(engine, prompts, reference) -> None:
    import time

    ids = [engine.submit(row, NEW_TOKENS) for row in prompts.tolist()]
    done: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while len(done) < len(ids) and time.monotonic() < deadline:
        done.update({c.request_id: c for c in engine.collect(0.5)})
    assert set(done) == set(ids)
    for request_id, row in zip(ids, reference.tolist(), strict=True):
        completion = done[request_id]
        assert list(completion.token_ids) == row and completion.error is None
        times = completion.token_times
        assert len(times) == NEW_TOKENS and list(times) == sorted(times)
    assert engine.collect(0.0) == []


def test_cancel_all_leaves_the_engine_idle_and_usable(engine, prompts, reference) -> None:
    for row in prompts.tolist():
        engine.submit(row, 40)
    engine.cancel_all()
    assert engine.collect(0.2) == []
    assert torch.equal(engine.generate(prompts, NEW_TOKENS).token_ids, reference)


def test_prefix_sharing_reuses_a_conversations_earlier_turn(hf_model) -> None:
    """The second turn resends the first turn's prompt: its cached blocks are found, not recomputed."""
    import time

    settings = ContinuousBatchingSettings(
        precision="fp32", page_size=16, prefix_sharing=True, kv_cache_tokens=512
    )
    engine = ContinuousBatchingEngine(hf_model, settings, "cpu", max_requests=2, max_sequence_tokens=128)
    first = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(5)).tolist()
    second = first + torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(6)).tolist()

    def serve(prompt: list[int]) -> None:
        request = engine.submit(prompt, 4)
        deadline = time.monotonic() + 60
        while not any(c.request_id == request for c in engine.collect(0.5)):
            assert time.monotonic() < deadline

    try:
        for prompt in (first, second):
            serve(prompt)
        counters = engine.prefix_counters()
        engine.forget_cached_prefixes()  # a new run of the stream: the first turn is not cached
        serve(first)
        after = engine.prefix_counters()
    finally:
        engine.close()
    assert counters["prompt_tokens"] == 64 + 80
    assert counters["hits"] >= 1
    # the first turn's 64 prompt tokens fill 4 pages of 16: all of them are reused
    assert counters["reused_prompt_tokens"] == 64
    assert counters["prefill_saved_fraction"] == pytest.approx(64 / 144)
    assert after["prompt_tokens"] == 64 + 80 + 64  # the counters go on across runs
    assert after["reused_prompt_tokens"] == 64  # nothing found for the fresh run's first prompt


def test_the_engine_decodes_what_the_plain_forward_decodes(engine) -> None:
    from optimizer.backends.parity import check_greedy_parity, random_prompts

    generation = check_greedy_parity(engine, random_prompts(VOCAB), 8, "fp32")
    assert generation.token_ids is not None and generation.token_ids.shape == (2, 8)


def test_a_longer_request_while_others_run_is_refused(engine, prompts) -> None:
    """A new paged cache means a new manager: the running requests would be lost in the old one,
    and the new one counts request ids from req_0 again (two requests under one id)."""
    running = engine.submit(prompts[0].tolist(), 40)
    with pytest.raises(RuntimeError, match="while requests run"):
        engine.submit(list(range(100, 200)), 4)  # 104 tokens do not fit in 64
    engine.cancel_all()
    assert running not in [c.request_id for c in engine.collect(0.2)]


def test_a_request_waiting_for_cache_room_is_one_lookup() -> None:
    """transformers searches a waiting request's prefix again at every schedule while it does not
    fit: each search counted, the report's hits / lookups had many times more lookups than requests."""
    from types import SimpleNamespace

    from optimizer.backends.torch_cb.engine import PrefixCounters

    cache = SimpleNamespace(search_prefix_match=lambda request_id, prompt_ids: 0)
    manager = SimpleNamespace(batch_processor=SimpleNamespace(cache=cache), is_running=lambda: True)
    counters = PrefixCounters()
    counters.attach(manager)
    for _ in range(5):
        cache.search_prefix_match("req_0", [1, 2, 3])
    cache.search_prefix_match("req_1", [1, 2, 3])
    assert counters.lookups == 2 and counters.hits == 0
