"""The Engine's parity check compares genai's greedy tokens with plain forwards of the same build.
genai masks EOS (a request produces exactly its max_new_tokens: min = max generated tokens), so the
reference must mask the build's EOS ids too: a model whose greedy next token is EOS is correct."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.measure.serving import Completion

VOCAB = 64


EOS = 2


def greedy(prompt: Sequence[int], tokens: int, eos_masked: bool) -> list[int]:
    """What `EosFirstEngine.score` decodes greedily: EOS every time, or with EOS masked, the
    runner-up: the last token + 1."""
    if not eos_masked:
        return [EOS] * tokens
    return [(prompt[-1] + i) % VOCAB for i in range(1, tokens + 1)]


class EosFirstEngine(OrtGenaiEngine):
    """Plain forward: EOS is always the best next token, the last token + 1 the runner-up."""

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*token_ids.shape, VOCAB)
        logits.scatter_(-1, ((token_ids + 1) % VOCAB).unsqueeze(-1), 9.0)
        logits[..., EOS] = 10.0
        return logits


class MaskingServer:
    """Serves like genai's Engine (greedy, EOS masked: exactly max_new_tokens each), or like an
    engine that ignored the mask."""

    def __init__(self, eos_masked: bool) -> None:
        self.eos_masked = eos_masked
        self.done: list[Completion] = []

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        request_id = f"r{len(self.done)}"
        tokens = greedy(prompt_ids, max_new_tokens, self.eos_masked)
        self.done.append(Completion(request_id, tuple(tokens), tuple(0.0 for _ in tokens)))
        return request_id

    def collect(self, timeout_seconds: float) -> list[Completion]:
        done, self.done = self.done, []
        return done


@pytest.mark.parametrize("eos", [EOS, [EOS, 5]])
def test_an_engine_that_masks_eos_passes_the_parity_check(tmp_path: Path, eos: int | list[int]) -> None:
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"vocab_size": VOCAB, "eos_token_id": eos}})
    )
    engine = EosFirstEngine(None, object(), OrtGenaiSettings(), tmp_path)
    engine._check_engine_parity(MaskingServer(eos_masked=True))  # type: ignore[arg-type]


def test_an_engine_that_emits_the_masked_eos_fails_the_parity_check(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"vocab_size": VOCAB, "eos_token_id": EOS}})
    )
    engine = EosFirstEngine(None, object(), OrtGenaiSettings(), tmp_path)
    with pytest.raises(RuntimeError, match="token 0: 2 instead of"):
        engine._check_engine_parity(MaskingServer(eos_masked=False))  # type: ignore[arg-type]
