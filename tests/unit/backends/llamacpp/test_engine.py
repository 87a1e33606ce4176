"""The llama.cpp engine on the packaged SmolLM2 GGUF (tiny and fast with llama.cpp): offline
generation, logits for the quality probe, a request stream, requantized weights, bad GGUFs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")

from optimizer.backends.artifacts import PROVENANCE  # noqa: E402
from optimizer.backends.llamacpp.engine import LlamaCppEngine  # noqa: E402
from optimizer.backends.llamacpp.errors import LlamaCppBuildError  # noqa: E402
from optimizer.backends.llamacpp.settings import LlamaCppSettings  # noqa: E402
from optimizer.backends.llamacpp.weights import CONVERTER_ENV, prepared_gguf, source_gguf  # noqa: E402
from optimizer.backends.registry import build_engine  # noqa: E402
from optimizer.model import ModelShape, ModelSpec  # noqa: E402
from optimizer.space import Candidate  # noqa: E402

VOCAB = 49152  # SmolLM2's


@pytest.fixture(scope="module")
def engine(gguf: Path) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=4)
    yield engine
    engine.close()


def model_spec(source: str, sha: str = "ab" * 32) -> ModelSpec:
    shape = ModelShape(30, 576, 9, 3, 64, VOCAB, 134_515_008)
    return ModelSpec("SmolLM2", source, Path("/nonexistent"), "gguf", sha, False, None, shape)


def prompts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(100, 40_000, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_generate_decodes_each_row_greedily_with_step_times(engine: LlamaCppEngine) -> None:
    ids = prompts(4, 24)
    gen = engine.generate(ids, 6)
    assert gen.token_ids is not None and tuple(gen.token_ids.shape) == (4, 6)
    assert gen.batch_size == 4 and gen.new_tokens == 6 and len(gen.latencies()) == 4
    assert gen.token_times is not None and list(gen.token_times) == sorted(gen.token_times)
    assert 0 < gen.ttft_seconds < gen.total_seconds
    single = engine.generate(ids[:1], 6)  # one sequence alone decodes the same tokens
    assert single.token_ids is not None and torch.equal(single.token_ids[0], gen.token_ids[0])
    more = engine.generate(prompts(6, 24), 3)  # more rows than sequences: they wait for a slot
    assert more.token_ids is not None and tuple(more.token_ids.shape) == (6, 3)


def test_score_gives_logits_at_every_position(engine: LlamaCppEngine) -> None:
    ids = prompts(2, 40, seed=1)
    logits = engine.score(ids)
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, 40, VOCAB)
    assert torch.isfinite(logits).all()
    gen = engine.generate(ids, 1)
    assert gen.token_ids is not None
    assert logits[:, -1].argmax(-1).tolist() == gen.token_ids[:, 0].tolist()


def test_a_request_stream_is_served_by_sequence_ids(engine: LlamaCppEngine) -> None:
    lengths = [5, 30, 12, 50, 8, 20]  # more requests than the 4 sequences, mixed lengths
    ids = {engine.submit(prompts(1, n, seed=n)[0].tolist(), 4 + i): 4 + i for i, n in enumerate(lengths)}
    done = []
    deadline = time.monotonic() + 60
    while len(done) < len(ids) and time.monotonic() < deadline:
        done += engine.collect(0.5)
    assert {c.request_id for c in done} == set(ids)
    for c in done:
        assert c.error is None and len(c.token_ids) == ids[c.request_id] == len(c.token_times)
        assert list(c.token_times) == sorted(c.token_times)


def test_cancel_all_drops_the_requests_in_flight(engine: LlamaCppEngine) -> None:
    for seed in range(6):
        engine.submit(prompts(1, 40, seed=seed)[0].tolist(), 100)
    time.sleep(0.2)
    engine.cancel_all()
    assert engine.collect(0.3) == []
    rid = engine.submit([1, 2, 3], 2)  # the engine serves again
    assert [c.request_id for c in engine.collect(10.0)] == [rid]


def test_a_longer_request_remakes_the_context(gguf: Path) -> None:
    engine = LlamaCppEngine(gguf, LlamaCppSettings(n_batch=64, n_ubatch=64), threads=1, sequences=2)
    try:
        gen = engine.generate(prompts(1, 270), 2)  # prefill split into batches of 64 tokens
        assert gen.token_ids is not None and tuple(gen.token_ids.shape) == (1, 2)
        assert engine.sequence_tokens >= 272
    finally:
        engine.close()
        engine.close()  # twice is fine


def test_a_truncated_gguf_fails_with_llamacpps_reason(gguf: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf.read_bytes()[:20_000_000])
    candidate = Candidate(LlamaCppSettings(), batch_size=1, threads=2)
    with pytest.raises(LlamaCppBuildError, match="cannot load truncated.gguf: .*(bounds|corrupted|failed)"):
        build_engine(model_spec(str(truncated)), candidate, _cpu(), tmp_path)


def test_a_quantized_v_cache_without_flash_attention_fails_with_the_reason(gguf: Path) -> None:
    engine = LlamaCppEngine(gguf, LlamaCppSettings(kv_type="q8_0", flash_attention=False), 2, 1)
    try:
        with pytest.raises(LlamaCppBuildError, match="flash_attn"):
            engine.generate(prompts(1, 4), 1)
    finally:
        engine.close()


def test_requantized_weights_are_cached_by_the_source_hash(tmp_path: Path) -> None:
    settings = LlamaCppSettings("Q8_0")
    first = prepared_gguf(model_spec("smollm2"), settings, tmp_path, threads=2)
    assert first.is_file() and first.parent.name.startswith("ab" * 8)
    provenance = json.loads((first.parent / PROVENANCE).read_text())
    assert provenance["options"]["weight_type"] == "Q8_0" and provenance["source_sha256"] == "ab" * 32
    mtime = first.stat().st_mtime_ns
    assert prepared_gguf(model_spec("smollm2"), settings, tmp_path, threads=2) == first  # reused
    assert first.stat().st_mtime_ns == mtime
    other = prepared_gguf(model_spec("smollm2", sha="cd" * 32), settings, tmp_path, threads=2)
    assert other != first  # other source weights: another artifact
    as_shipped = prepared_gguf(model_spec("smollm2"), LlamaCppSettings(), tmp_path, threads=2)
    assert as_shipped.name.endswith(".gguf") and "llamacpp" not in as_shipped.parts


def test_a_requantized_candidate_builds_and_scores(tmp_path: Path) -> None:
    candidate = Candidate(LlamaCppSettings("Q8_0", "q8_0"), batch_size=2, threads=2)
    engine = build_engine(model_spec("smollm2"), candidate, _cpu(), tmp_path)
    try:
        assert tuple(engine.score(prompts(1, 16)).shape) == (1, 16, VOCAB)
    finally:
        engine.close()


def _cpu():  # type: ignore[no-untyped-def]
    from unit.factories import target_spec

    return target_spec(cores=2)


def test_the_engine_starts_no_process_and_stops_its_thread(gguf: Path) -> None:
    """In-process: nothing can outlive a crashed run (no server, no child process). Children that
    earlier tests of the session left (a database server, compile workers) are not the engine's."""
    before = set(_children())
    engine = LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=2)
    engine.submit([1, 2, 3], 3)
    assert len(engine.collect(10.0)) == 1
    thread = engine._thread
    assert thread is not None and thread.is_alive()
    assert set(_children()) - before == set()
    engine.close()
    assert not thread.is_alive()


def _children() -> list[int]:
    me = os.getpid()
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            children.append(int(stat.parent.name))
    return children


def test_a_model_directory_is_converted_once_by_the_named_converter(
    gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in for llama.cpp's convert_hf_to_gguf.py: copies the packaged GGUF to --outfile
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text(
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"shutil.copy({str(gguf)!r}, args[args.index('--outfile') + 1])\n"
        "print('converted', args[0], args[args.index('--outtype') + 1])\n"
    )
    monkeypatch.setenv(CONVERTER_ENV, str(script))
    directory = replace(model_spec("unused"), format="hf-dir", path=tmp_path)
    converted = source_gguf(directory, tmp_path / "cache")
    assert converted.is_file() and "-hf-f16-" in converted.parent.name
    assert source_gguf(directory, tmp_path / "cache") == converted  # cached
    script.write_text("import sys\nprint('no such model', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(LlamaCppBuildError, match="exited 3: no such model"):
        source_gguf(replace(directory, weight_sha256="ef" * 32), tmp_path / "cache")
    monkeypatch.delenv(CONVERTER_ENV)
    with pytest.raises(LlamaCppBuildError, match="not a GGUF file and no converter"):
        source_gguf(replace(directory, weight_sha256="12" * 32), tmp_path / "cache")


def test_prefix_sharing_reuses_a_conversations_cells_with_the_same_tokens(gguf: Path) -> None:
    history = prompts(1, 48, seed=5)[0].tolist()

    def serve(engine: LlamaCppEngine, prompt: list[int], new: int) -> tuple[int, ...]:
        engine.submit(prompt, new)
        done = engine.collect(30.0)
        assert len(done) == 1 and done[0].error is None
        return done[0].token_ids

    sharing = LlamaCppEngine(gguf, LlamaCppSettings(prefix_sharing=True), threads=1, sequences=2)
    plain = LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=2)
    try:
        first = serve(sharing, history, 6)
        second_turn = [*history, *first, 11, 12, 13]  # the history resent, then a new message
        assert serve(sharing, second_turn, 6) == serve(plain, second_turn, 6)
        counts = sharing.prefix_counters()
        assert counts["hits"] == 1 and counts["reused_prompt_tokens"] == 48 + 5  # all but the last output
        assert plain.prefix_counters() == {}  # no prefix cache measured: none recorded
    finally:
        sharing.close()
        plain.close()


def test_a_new_conversation_copies_the_system_prompt_of_a_running_one(gguf: Path) -> None:
    """Two conversations behind one system prompt, the second arriving while the first decodes:
    llama.cpp copies the first one's cells into a free sequence (a copy across KV streams), and
    both answer as without sharing."""
    system, first, second = (p.tolist() for p in prompts(3, 48, seed=11))
    asked = [(system + first[:8], 24), (system + second[:6], 6)]

    def serve(engine: LlamaCppEngine) -> list[tuple[int, ...]]:
        ids = [engine.submit(*asked[0])]
        deadline = time.monotonic() + 30
        while not engine._slots.active or next(iter(engine._slots.active.values())).fed < 56:
            assert time.monotonic() < deadline, "the first request was never prefilled"
            time.sleep(0.001)
        ids.append(engine.submit(*asked[1]))
        done: dict[str, tuple[int, ...]] = {}
        while len(done) < 2:
            for c in engine.collect(30.0):
                assert c.error is None, c.error
                done[c.request_id] = c.token_ids
        return [done[i] for i in ids]

    sharing = LlamaCppEngine(gguf, LlamaCppSettings(prefix_sharing=True), threads=1, sequences=2)
    plain = LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=2)
    try:
        sharing.reserve(128)
        assert sharing._ctx is not None
        copy, copies = sharing._ctx.copy, []
        sharing._ctx.copy = lambda source, target: (copies.append((source, target)), copy(source, target))  # type: ignore[method-assign]
        assert serve(sharing) == serve(plain)
        counts = sharing.prefix_counters()
        assert copies == [(0, 1)]  # out of the running sequence, not a finished one's cache
        assert counts["hits"] == 1 and counts["reused_prompt_tokens"] == 48, counts
    finally:
        sharing.close()
        plain.close()


def test_a_new_run_or_a_re_made_context_matches_no_earlier_prompt(gguf: Path) -> None:
    """A run of a stream starts cold (forget_cached_prefixes), and a context re-made for longer
    requests holds no cells: an old match there would decode from cells that are gone."""
    prompt = prompts(1, 40, seed=7)[0].tolist()

    def serve(engine: LlamaCppEngine) -> tuple[int, ...]:
        engine.submit(prompt, 6)
        done = engine.collect(30.0)
        assert len(done) == 1 and done[0].error is None
        return done[0].token_ids

    plain = LlamaCppEngine(gguf, LlamaCppSettings(), threads=1, sequences=1)
    sharing = LlamaCppEngine(gguf, LlamaCppSettings(prefix_sharing=True), threads=1, sequences=1)
    try:
        plain.reserve(64)
        want = serve(plain)
        sharing.reserve(64)
        assert serve(sharing) == want
        sharing.forget_cached_prefixes()
        assert serve(sharing) == want
        assert sharing.prefix_counters()["hits"] == 0  # the second run found nothing of the first
        sharing.reserve(600)  # re-made for longer requests, after a run left its prompt cached
        assert serve(sharing) == want
        assert sharing.prefix_counters()["hits"] == 0
    finally:
        plain.close()
        sharing.close()
