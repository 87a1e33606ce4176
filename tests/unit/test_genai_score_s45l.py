"""onnxruntime-genai `score` and the vocabulary (s45): generate and submit refused a prompt token
outside it, score let it through. On a real build (tiny Llama, genai 0.18) a negative id scored
exactly as vocab - 5 (ONNX Gather counts from the end), silently; one past the end failed in
genai's Gather. Both are now refused before a Generator is made. A stand-in for the library."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.settings import OrtGenaiSettings

VOCAB = 50


class _Params:
    def __init__(self, model: Any) -> None:
        self.options: dict[str, Any] = {}

    def set_search_options(self, **options: Any) -> None:
        self.options = options


class _Generator:
    made = 0

    def __init__(self, model: Any, params: _Params) -> None:
        _Generator.made += 1
        self.ids = np.zeros((0, 0), dtype=np.int32)

    def append_tokens(self, ids: np.ndarray) -> None:
        self.ids = ids

    def get_output(self, name: str) -> np.ndarray:
        assert name == "logits"
        return np.zeros((*self.ids.shape, VOCAB), dtype=np.float32)


def _engine(vocab_size: int | None) -> OrtGenaiEngine:
    og = SimpleNamespace(GeneratorParams=_Params, Generator=_Generator)
    return OrtGenaiEngine(og, object(), OrtGenaiSettings(), Path("unused"), vocab_size=vocab_size)


@pytest.mark.parametrize("bad", [-5, VOCAB, VOCAB + 7])
def test_score_refuses_a_token_outside_the_vocabulary(bad: int) -> None:
    made = _Generator.made
    with pytest.raises(ValueError, match=f"token id {bad} is outside the model's vocabulary of {VOCAB}"):
        _engine(VOCAB).score(torch.tensor([[5, 6, 7], [5, bad, 7]]))
    assert _Generator.made == made  # refused before genai saw it


def test_score_takes_every_token_of_the_vocabulary() -> None:
    logits = _engine(VOCAB).score(torch.tensor([[0, 1, VOCAB - 1]]))
    assert tuple(logits.shape) == (1, 3, VOCAB)


def test_score_without_a_known_vocabulary_is_not_checked() -> None:
    assert tuple(_engine(None).score(torch.tensor([[-1, 2]])).shape) == (1, 2, VOCAB)
