"""Quality against the unoptimized reference on the same held-out text.

Metrics per candidate: relative perplexity change, top-1 next-token agreement, and the mean
KL(reference || candidate) of next-token distributions (nats).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from optimizer.config import QUALITY_REFERENCES, QualityConfig
from optimizer.errors import UserError

if TYPE_CHECKING:
    from optimizer.backends.base import Engine


@dataclass(frozen=True)
class QualityResult:
    perplexity: float
    reference_perplexity: float
    ppl_increase: float  # relative: 0.02 = +2%
    top1_agreement: float
    mean_kl: float
    tokens: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def violations(self, bound: QualityConfig) -> list[str]:
        """The bound's limits this result breaks, each naming the field and both numbers."""
        broken = []
        # every compared figure: a NaN passes each `>`/`<` test below (a NaN reference perplexity
        # makes ppl_increase NaN, an empty comparison top-1 NaN)
        figures = (self.perplexity, self.mean_kl, self.ppl_increase, self.top1_agreement)
        if not all(math.isfinite(v) for v in figures):
            broken.append("quality metrics are not finite (numerical overflow in this precision?)")
        if self.ppl_increase > bound.max_ppl_increase:
            ppl, limit = _apart(self.ppl_increase, bound.max_ppl_increase, 2, "%")
            broken.append(f"ppl +{ppl} > quality.max_ppl_increase {limit}")
        if self.top1_agreement < bound.min_top1_agreement:
            top1, limit = _apart(self.top1_agreement, bound.min_top1_agreement, 2, "%")
            broken.append(f"top-1 {top1} < quality.min_top1_agreement {limit}")
        if self.mean_kl > bound.max_kl:
            kl, limit = _apart(self.mean_kl, bound.max_kl, 3, "g")
            broken.append(f"KL {kl} > quality.max_kl {limit}")
        return broken


def _apart(value: float, limit: float, digits: int, kind: str) -> tuple[str, str]:
    """`value` and `limit` to the fewest digits (at least `digits`) that tell them apart: a value
    just past its limit read 'ppl +0.00% > quality.max_ppl_increase 0.00%'."""
    for places in range(digits, 18):
        shown = format(value, f".{places}{kind}"), format(limit, f".{places}{kind}")
        if shown[0] != shown[1]:
            break
    return shown


class QualityReference:
    """Reference log-probabilities (float32, CPU) on the eval tokens, from the engine given: the fp32
    eager model, or the GGUF as shipped in llama.cpp (`quality.reference`)."""

    def __init__(self, token_ids: torch.Tensor, engine: Engine, batch_size: int) -> None:
        self.token_ids = token_ids
        self.batch_size = batch_size
        batches = [torch.log_softmax(x, dim=-1) for x in _scored(engine, token_ids, batch_size)]
        self.log_probs = torch.cat(batches)
        # summed batch by batch in evaluate_quality's order: identical logits give exactly +0%
        nll, row = 0.0, 0
        for batch in batches:
            nll += _nll_sum(batch[:, :-1], token_ids[row : row + batch.shape[0], 1:])
            row += batch.shape[0]
        self.perplexity = _perplexity(nll / token_ids[:, 1:].numel())


def evaluate_quality(engine: Engine, reference: QualityReference) -> QualityResult:
    start = time.perf_counter()
    ids = reference.token_ids
    kl_sum, agree, nll_sum, count = 0.0, 0, 0.0, 0
    row = 0
    for logits in _scored(engine, ids, reference.batch_size):
        cand = torch.log_softmax(logits, dim=-1)[:, :-1]
        ref = reference.log_probs[row : row + logits.shape[0], :-1]
        targets = ids[row : row + logits.shape[0], 1:]
        kl_sum += float((ref.exp() * (ref - cand)).sum(-1).sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        nll_sum += _nll_sum(cand, targets)
        count += targets.numel()
        row += logits.shape[0]
    perplexity = _perplexity(nll_sum / count)
    return QualityResult(
        perplexity=perplexity,
        reference_perplexity=reference.perplexity,
        ppl_increase=perplexity / reference.perplexity - 1.0,
        top1_agreement=agree / count,
        mean_kl=max(kl_sum / count, 0.0),
        tokens=count,
        seconds=time.perf_counter() - start,
    )


class ReferenceNotFinite(UserError):
    """The reference itself overflowed: a run-level error, not one candidate's failure."""


def require_finite_reference(reference: QualityReference, name: str) -> None:
    """Raise ReferenceNotFinite when the `quality.reference` named `name` gave NaN or infinite
    log-probabilities or perplexity: every candidate, the exact model included, would be judged
    against NaN and rejected as 'not finite'."""
    if math.isfinite(reference.perplexity) and bool(reference.log_probs.isfinite().all()):
        return
    fix = {
        "fp16": "quality.reference=bf16 (fp32's range in half the memory) or quality.reference=fp32",
        "bf16": "quality.reference=fp32",
        "gguf": "quality.reference=fp32 (the GGUF de-quantized, run in fp32)",
    }.get(name, "check the model: its own fp32 outputs are not finite")
    raise ReferenceNotFinite(
        "quality.reference",
        f"the {QUALITY_REFERENCES[name].removeprefix('the ')} reference itself is not finite on the held-out text "
        f"(perplexity {reference.perplexity}; its activations overflow in this precision?)",
        fix,
    )


def _perplexity(mean_nll: float) -> float:
    # math.exp raises past ~709 nats (huge finite logits): inf, which the bound then rejects
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def _scored(engine: Any, ids: torch.Tensor, batch_size: int) -> Any:
    for row in range(0, ids.shape[0], batch_size):
        yield engine.score(ids[row : row + batch_size])


def _nll_sum(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood in float64, the same way for reference and candidate."""
    return float(-log_probs.gather(-1, targets.unsqueeze(-1)).double().sum())
