"""Quality judgment and quality text: rejection reasons that tell value and limit apart, blank
lines holding whitespace, and a quality.text that is a folder or empty."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from optimizer.config import QualityConfig
from optimizer.errors import UserError
from optimizer.measure.quality import QualityReference, QualityResult, evaluate_quality
from optimizer.measure.text import load_text

VOCAB = 8


class TableEngine:
    """Deterministic per-input logits, plus an optional tiny perturbation."""

    def __init__(self, noise: float = 0.0) -> None:
        self.noise = noise

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7)) * 3
        bump = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(8)) * self.noise
        return (table + bump)[token_ids]


def _sides(reason: str) -> tuple[str, str]:
    left, right = re.split(r" [<>] ", reason)
    return left.split(" ", 1)[1].lstrip("+"), right.rsplit(" ", 1)[1]


def test_a_candidate_just_past_a_zero_ppl_bound_shows_a_nonzero_increase() -> None:
    tokens = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    reference = QualityReference(tokens, TableEngine(), batch_size=2)
    result = evaluate_quality(TableEngine(noise=1e-4), reference)
    assert 0 < result.ppl_increase < 5e-5
    (reason,) = [r for r in result.violations(QualityConfig(max_ppl_increase=0.0)) if "ppl" in r]
    value, limit = _sides(reason)
    assert value != limit, reason  # it read 'ppl +0.00% > quality.max_ppl_increase 0.00%'
    assert limit.startswith("0.0") and limit.endswith("%")


@pytest.mark.parametrize(
    ("result", "field"),
    [
        (QualityResult(10.3, 10.0, 0.030004, 0.99, 0.0, 1000, 1.0), "quality.max_ppl_increase"),
        (QualityResult(10.0, 10.0, 0.0, 0.949999, 0.0, 1000, 1.0), "quality.min_top1_agreement"),
        (QualityResult(10.0, 10.0, 0.0, 0.99, 0.0500004, 1000, 1.0), "quality.max_kl"),
    ],
)
def test_a_value_just_past_its_limit_is_shown_apart_from_it(result: QualityResult, field: str) -> None:
    (reason,) = result.violations(QualityConfig())
    assert field in reason
    value, limit = _sides(reason)
    assert value != limit, reason  # they read 'KL 0.05 > quality.max_kl 0.05'


def test_clearly_broken_limits_keep_their_short_form() -> None:
    broken = QualityResult(11.0, 10.0, 0.10, 0.80, 0.20, 1000, 1.0).violations(QualityConfig())
    assert broken == [
        "ppl +10.00% > quality.max_ppl_increase 3.00%",
        "top-1 80.00% < quality.min_top1_agreement 95.00%",
        "KL 0.2 > quality.max_kl 0.05",
    ]


def test_blank_lines_holding_whitespace_separate_paragraphs(tmp_path: Path) -> None:
    # wikitext-2-raw's layout: every line begins with a space, its blank lines are " \n"
    wikitext = tmp_path / "wiki.test.raw"
    wikitext.write_text("".join(f" = Article {i} = \n \n Text of article {i} . \n \n" for i in range(10)))
    splits = load_text(str(wikitext))  # it was one paragraph: 'at least 10 are needed'
    assert splits.quality[:2] == ["= Article 0 =", "Text of article 2 ."]
    assert len(splits.quality) + len(splits.workload) == 20

    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("\n\t \n".join(f"paragraph {i}" for i in range(12)))
    assert load_text(str(tabbed)).quality == ["paragraph 0", "paragraph 5", "paragraph 10"]


def test_plain_blank_lines_split_as_before(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n\n".join(f"line one {i}\nline two {i}" for i in range(10)) + "\n")
    splits = load_text(str(path))
    assert splits.quality == ["line one 0\nline two 0", "line one 5\nline two 5"]
    assert len(splits.workload) == 8


def test_a_folder_as_quality_text_is_not_said_to_be_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path))
    assert info.value.field == "quality.text"
    assert "folder" in info.value.problem and "does not exist" not in info.value.problem


@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_quality_text_is_refused_naming_the_field(text: str) -> None:
    # it became Path('.'), the working directory: '. does not exist'
    with pytest.raises(UserError) as info:
        QualityConfig(text=text)
    assert info.value.field == "quality.text" and "empty" in info.value.problem
