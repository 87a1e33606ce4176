"""onnxruntime-genai request checks found by s45: `generate(ids, 0)` returned one token (a
negative count too), and a prompt token outside the vocabulary reached genai, which took a
negative id for another token (ONNX Gather counts from the end) and failed the whole static
batch, innocent requests included, on one past the end. llama.cpp and torch-cb refuse both."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.serving import GenaiEngineServer
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.measure.serving import Completion
from unit.test_genai_s43 import _engine
from unit.test_genaiserve_s42 import FakeOg

VOCAB = 49152


@pytest.mark.parametrize("count", [0, -3])
def test_generate_refuses_fewer_than_one_new_token(count: int) -> None:
    with pytest.raises(ValueError, match=f"max_new_tokens must be >= 1, got {count}"):
        _engine().generate(torch.zeros((2, 4), dtype=torch.int64), count)


@pytest.mark.parametrize("bad", [-5, VOCAB, VOCAB + 10])
def test_generate_refuses_a_token_outside_the_vocabulary(bad: int) -> None:
    engine = _engine()
    engine.vocab_size = VOCAB
    with pytest.raises(ValueError, match=f"token id {bad} is outside the model's vocabulary of {VOCAB}"):
        engine.generate(torch.tensor([[5, bad, 7]]), 2)


@pytest.mark.parametrize("bad", [-5, VOCAB])
def test_submit_refuses_a_token_outside_the_vocabulary(bad: int) -> None:
    server = GenaiEngineServer(FakeOg(), object(), max_requests=2, vocab_size=VOCAB)
    try:
        with pytest.raises(ValueError, match=f"token id {bad} is outside the model's vocabulary"):
            server.submit([5, bad, 7], 2)
        assert server.idle  # nothing was queued for genai
    finally:
        server.close()


def collect(engine: OrtGenaiEngine, count: int) -> dict[str, Completion]:
    done: dict[str, Completion] = {}
    deadline = time.monotonic() + 60
    while len(done) < count and time.monotonic() < deadline:
        done.update((c.request_id, c) for c in engine.collect(0.5))
    return done


@pytest.mark.slow
def test_a_built_engine_refuses_bad_requests_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    """On a real build: the bad request is refused at submit, its neighbour is served."""
    pytest.importorskip("onnxruntime_genai")
    from optimizer.backends.ort_genai.backend import ensure_build
    from optimizer.config import ModelConfig
    from optimizer.model import resolve_model

    settings = OrtGenaiSettings()
    spec = resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path)
    engine = OrtGenaiEngine.load(ensure_build(spec, settings, tmp_path), settings, 2, 2)
    try:
        assert engine.vocab_size == VOCAB
        with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
            engine.generate(torch.tensor([[5, 6, 7]]), 0)
        with pytest.raises(ValueError, match="token id -5"):
            engine.generate(torch.tensor([[5, -5, 7]]), 2)
        good = engine.submit([5, 6, 7], 3)
        with pytest.raises(ValueError, match=f"token id {VOCAB + 10}"):
            engine.submit([5, VOCAB + 10, 7], 3)
        done = collect(engine, 1)
        assert done[good].error is None and len(done[good].token_ids) == 3
    finally:
        engine.close()
