"""Overflow in the quality probe: a candidate whose huge finite logits overflow the perplexity is
rejected with its figures (stored once per numerics), and a reference that is itself not finite
stops the run with a UserError naming quality.reference, storing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.config import QualityConfig, SearchConfig, SloConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.workload import Workload
from optimizer.results import REJECTED
from optimizer.search import evaluate as evaluate_module
from optimizer.search.evaluate import Evaluator
from optimizer.search.runner import run_search
from optimizer.space import Candidate
from optimizer.store import TrialStore
from unit.factories import target_spec, torch_candidate

VOCAB = 16


class TableEngine:
    """Logits from a fixed table: int8-dynamic saturates them (huge, finite); fp16 gives NaN."""

    def __init__(self, settings: object) -> None:
        self.settings = settings

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)) * 4
        if getattr(self.settings, "quantization", None) == "int8-dynamic":
            table = table * 1000.0  # mean NLL far past exp's ~709 nats
        if getattr(self.settings, "precision", None) == "fp16":
            table[0, 0] = float("nan")  # activations past 65504
        return table[token_ids]

    def close(self) -> None:
        pass


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []

    def build_engine(model: object, candidate: Candidate, target: object, workdir: Path) -> TableEngine:
        built.append(candidate.label())
        return TableEngine(candidate.settings)

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    return built


def evaluator(store: TrialStore, tmp_path: Path, reference: str = "fp32") -> Evaluator:
    return Evaluator(
        model=None,  # type: ignore[arg-type]  # only passed through to the (fake) build_engine
        target=target_spec(),
        meter=None,  # type: ignore[arg-type]  # never reached: every candidate here is rejected
        workload=Workload(torch.randint(0, VOCAB, (4, 5)), 3),
        quality_tokens=torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1)),
        workload_cfg=WorkloadConfig(prompt_tokens=5, max_new_tokens=3, slo=SloConfig(tpot_ms=None)),
        quality_cfg=QualityConfig(reference=reference),
        search_cfg=SearchConfig(),
        store=store,
        workdir=tmp_path,
    )


def test_a_saturating_candidate_is_rejected_and_its_quality_stored_once(
    builds: list[str], tmp_path: Path
) -> None:
    store = TrialStore(tmp_path / "s.db", "ctx")
    ev = evaluator(store, tmp_path)
    results = [ev.evaluate(torch_candidate(batch_size=b, quantization="int8-dynamic")) for b in (1, 2, 4)]
    assert [r.status for r in results] == [REJECTED] * 3
    assert all("not finite" in str(r.reason) for r in results)
    assert results[0].quality is not None and results[0].quality.perplexity == float("inf")
    stored = store.quality_for(torch_candidate(quantization="int8-dynamic").numerics_key())
    assert stored is not None and stored["perplexity"] == float("inf")
    assert len(builds) == 2  # the reference and one probe: the other batch sizes are rejected free


def test_a_reference_that_is_not_finite_stops_the_run_storing_nothing(
    builds: list[str], tmp_path: Path
) -> None:
    store = TrialStore(tmp_path / "s.db", "ctx")
    ev = evaluator(store, tmp_path, reference="fp16")
    exact = torch_candidate(precision="fp32")
    with pytest.raises(UserError) as raised:
        run_search(
            [exact, torch_candidate(precision="bf16")],
            [],
            exact,
            ev,
            SearchConfig(),
            QualityConfig(reference="fp16"),
            progress=lambda _: None,
        )
    assert raised.value.field == "quality.reference"
    assert "not finite" in raised.value.problem
    assert "quality.reference=bf16" in raised.value.fix
    assert builds == ["torch fp16 kv=dynamic b1 t4"]  # the reference alone: no candidate is built or judged
    assert store.get(exact) is None and store.run_count() == 0
    assert store.quality_for(exact.numerics_key()) is None


def test_evaluate_raises_for_a_reference_that_is_not_finite_again_and_again(
    builds: list[str], tmp_path: Path
) -> None:
    """Not a per-candidate failure, and never cached: each call says so (verify's path too)."""
    ev = evaluator(TrialStore(tmp_path / "s.db", "ctx"), tmp_path, reference="fp16")
    for _ in range(2):
        with pytest.raises(UserError, match="quality.reference"):
            ev.evaluate(torch_candidate(), role="baseline")
