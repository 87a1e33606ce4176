"""Quality vs the reference: perplexity change, top-1 agreement and KL of next-token distributions."""

from __future__ import annotations

import math

import pytest
import torch

from optimizer.config import QualityConfig
from optimizer.measure.quality import QualityReference, QualityResult, evaluate_quality

VOCAB = 8


class FixedLogitsEngine:
    """score() returns the same logits for every position of every row."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.calls: list[int] = []

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        self.calls.append(token_ids.shape[0])
        batch, tokens = token_ids.shape
        return self.logits.expand(batch, tokens, VOCAB).clone()


class RandomLogitsEngine:
    """Deterministic per-input logits: the same ids always give the same numbers."""

    def __init__(self, scale: float = 1.0, shift: torch.Tensor | None = None) -> None:
        self.scale = scale
        self.shift = shift

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1234)
        table = torch.randn(VOCAB, VOCAB, generator=gen) * 3
        logits = table[token_ids] * self.scale
        return logits + self.shift if self.shift is not None else logits


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(0))


def test_identical_logits_are_lossless_and_pass_a_zero_loss_bound(tokens: torch.Tensor) -> None:
    ref = QualityReference(tokens, RandomLogitsEngine(), batch_size=2)
    result = evaluate_quality(RandomLogitsEngine(), ref)
    assert result.ppl_increase == 0.0  # exactly: a bound of 0 must not reject the reference itself
    assert result.top1_agreement == 1.0
    assert result.mean_kl == pytest.approx(0.0, abs=1e-7)
    assert result.tokens == 5 * 11  # the last position has no next token
    assert result.perplexity == pytest.approx(ref.perplexity, rel=1e-6)
    assert result.violations(QualityConfig(max_ppl_increase=0, min_top1_agreement=1, max_kl=0)) == []


def test_reference_scores_in_batches(tokens: torch.Tensor) -> None:
    engine = FixedLogitsEngine(torch.zeros(VOCAB))
    ref = QualityReference(tokens, engine, batch_size=2)
    assert engine.calls == [2, 2, 1]
    assert ref.log_probs.shape == (5, 12, VOCAB)
    # uniform logits: perplexity is the vocabulary size
    assert ref.perplexity == pytest.approx(VOCAB)


def test_shifted_distribution_gives_the_hand_computed_kl(tokens: torch.Tensor) -> None:
    p_logits = torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    q_logits = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # top two swapped
    ref = QualityReference(tokens, FixedLogitsEngine(p_logits), batch_size=3)
    result = evaluate_quality(FixedLogitsEngine(q_logits), ref)

    p = [math.exp(x) for x in p_logits.tolist()]
    q = [math.exp(x) for x in q_logits.tolist()]
    p = [x / sum(p) for x in p]
    q = [x / sum(q) for x in q]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert result.mean_kl == pytest.approx(kl, rel=1e-5)
    assert result.top1_agreement == 0.0  # argmax moved from token 0 to token 1

    ids = tokens[:, 1:].flatten().tolist()
    nll_ref = -sum(math.log(p[i]) for i in ids) / len(ids)
    nll_cand = -sum(math.log(q[i]) for i in ids) / len(ids)
    assert result.reference_perplexity == pytest.approx(math.exp(nll_ref), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll_cand), rel=1e-5)
    assert result.ppl_increase == pytest.approx(math.exp(nll_cand - nll_ref) - 1, abs=1e-5)


def test_temperature_change_keeps_top1_but_costs_kl(tokens: torch.Tensor) -> None:
    ref = QualityReference(tokens, RandomLogitsEngine(), batch_size=4)
    result = evaluate_quality(RandomLogitsEngine(scale=0.5), ref)
    assert result.top1_agreement == 1.0
    assert result.mean_kl > 0.01


def test_a_constant_logit_offset_changes_nothing(tokens: torch.Tensor) -> None:
    ref = QualityReference(tokens, RandomLogitsEngine(), batch_size=4)
    result = evaluate_quality(RandomLogitsEngine(shift=torch.full((VOCAB,), 7.0)), ref)
    assert result.mean_kl == pytest.approx(0.0, abs=1e-5)
    assert result.ppl_increase == pytest.approx(0.0, abs=1e-5)


def _result(ppl: float, top1: float, kl: float) -> QualityResult:
    return QualityResult(
        perplexity=10 * (1 + ppl),
        reference_perplexity=10.0,
        ppl_increase=ppl,
        top1_agreement=top1,
        mean_kl=kl,
        tokens=100,
        seconds=1.0,
    )


def test_violations_name_each_broken_field() -> None:
    bound = QualityConfig(max_ppl_increase=0.03, min_top1_agreement=0.95, max_kl=0.05)
    assert _result(0.02, 0.96, 0.04).violations(bound) == []
    broken = _result(0.10, 0.80, 0.20).violations(bound)
    assert len(broken) == 3
    assert "quality.max_ppl_increase" in broken[0]
    assert "quality.min_top1_agreement" in broken[1]
    assert "quality.max_kl" in broken[2]
    only_kl = _result(0.0, 1.0, 0.06).violations(bound)
    assert len(only_kl) == 1 and "quality.max_kl" in only_kl[0]


def test_quality_result_to_dict_round_trips() -> None:
    q = _result(0.01, 0.99, 0.001)
    assert QualityResult(**q.to_dict()) == q


def test_non_finite_quality_is_a_violation() -> None:
    from optimizer.measure.quality import QualityResult

    nan = float("nan")
    result = QualityResult(nan, 10.0, nan, 0.0, nan, 100, 0.1)
    broken = result.violations(QualityConfig(max_ppl_increase=1e9, min_top1_agreement=0, max_kl=1e9))
    assert broken and "not finite" in broken[0]


@pytest.mark.parametrize("scale", [300.0, -3000.0])
def test_huge_finite_logits_give_an_infinite_perplexity_that_is_rejected(
    tokens: torch.Tensor, scale: float
) -> None:
    """A mean NLL past ~709 nats overflows math.exp: inf, judged by the bound, not an OverflowError."""
    ref = QualityReference(tokens, RandomLogitsEngine(), batch_size=2)
    result = evaluate_quality(RandomLogitsEngine(scale=scale), ref)
    assert result.perplexity == math.inf and result.ppl_increase == math.inf
    assert "not finite" in result.violations(QualityConfig())[0]


def test_a_reference_with_huge_finite_logits_has_an_infinite_perplexity(tokens: torch.Tensor) -> None:
    ref = QualityReference(tokens, RandomLogitsEngine(scale=300.0), batch_size=2)
    assert ref.perplexity == math.inf


class NanLogitsEngine(RandomLogitsEngine):
    """An fp16 model whose activations pass 65504: some logits come back NaN."""

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        logits = super().score(token_ids)
        logits[0, 0, 0] = float("nan")
        return logits


@pytest.mark.parametrize(
    ("name", "fix"), [("fp16", "quality.reference=bf16"), ("bf16", "quality.reference=fp32")]
)
def test_a_reference_that_is_not_finite_is_a_user_error(tokens: torch.Tensor, name: str, fix: str) -> None:
    from optimizer.errors import UserError
    from optimizer.measure.quality import require_finite_reference

    require_finite_reference(QualityReference(tokens, RandomLogitsEngine(), batch_size=2), name)
    for engine in (NanLogitsEngine(), RandomLogitsEngine(scale=300.0)):  # NaN, then an inf perplexity
        with pytest.raises(UserError) as raised:
            require_finite_reference(QualityReference(tokens, engine, batch_size=2), name)
        assert raised.value.field == "quality.reference"
        assert "not finite" in raised.value.problem and fix in raised.value.fix
