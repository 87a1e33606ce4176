"""onnxruntime-genai scoring at the limits the quality config allows: a window of the model's whole
context (the quality check refuses only longer ones), and more rows than one Generator takes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai (pip install 'wattsmith[ort]')")

from optimizer.backends.ort_genai.backend import OrtGenaiEngine, ensure_build  # noqa: E402
from optimizer.backends.ort_genai.settings import GENERATOR_MAX_BATCH, OrtGenaiSettings  # noqa: E402
from optimizer.config import ModelConfig  # noqa: E402
from optimizer.model import ModelSpec, resolve_model  # noqa: E402

VOCAB = 49152


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path_factory.mktemp("genai-score"))


@pytest.fixture(scope="module")
def engine(tiny_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrtGenaiEngine]:
    build_dir = ensure_build(tiny_spec, OrtGenaiSettings(), tmp_path_factory.mktemp("genai-build"))
    engine = OrtGenaiEngine.load(build_dir, OrtGenaiSettings(), threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(tiny_spec: ModelSpec) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_spec.path)).eval()


def torch_logits(reference: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return reference(input_ids=ids).logits


def test_a_window_of_the_whole_context_scores_like_torch(
    engine: OrtGenaiEngine, reference: torch.nn.Module
) -> None:
    context = json.loads((engine.build_dir / "genai_config.json").read_text())["model"]["context_length"]
    assert context == 512  # the tiny model's max_position_embeddings
    ids = torch.randint(3, VOCAB, (1, context), generator=torch.Generator().manual_seed(0))
    logits = engine.score(ids)
    assert logits.shape == (1, context, VOCAB)
    torch.testing.assert_close(logits, torch_logits(reference, ids), rtol=1e-3, atol=1e-3)
    # a shorter window: the same logits as its prefix of the whole one (causal)
    torch.testing.assert_close(engine.score(ids[:, :7]), logits[:, :7], rtol=1e-5, atol=1e-5)


def test_more_rows_than_a_generator_takes_are_scored_in_chunks(
    engine: OrtGenaiEngine, reference: torch.nn.Module
) -> None:
    rows = 2 * GENERATOR_MAX_BATCH + 1
    ids = torch.randint(3, VOCAB, (rows, 5), generator=torch.Generator().manual_seed(1))
    logits = engine.score(ids)
    assert logits.shape == (rows, 5, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch_logits(reference, ids), rtol=1e-3, atol=1e-3)
    # each row as if scored alone: chunking does not mix rows up
    torch.testing.assert_close(logits[-1:], engine.score(ids[-1:]), rtol=1e-5, atol=1e-5)
