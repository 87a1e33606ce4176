"""Shared by the evals scripts (run as `python evals/<script>.py`, so this folder is on sys.path)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.results import CandidateResult

if TYPE_CHECKING:
    from optimizer.backends.torch.slot_server import SlotEngine
    from optimizer.measure.setup import MeasurementSetup
    from optimizer.space import Candidate


def measured_row(result: CandidateResult) -> dict[str, Any]:
    """One measured candidate as a flat JSON row; exits when it was not measured."""
    perf, quality = result.performance, result.quality
    if perf is None:
        raise SystemExit(f"{result.candidate.label()} was not measured: {result.reason}")
    row: dict[str, Any] = {
        "label": result.candidate.label(),
        "settings": result.candidate.to_dict(),
        "goodput_tokens_per_joule": perf.goodput_tokens_per_joule.mean,
        "tokens_per_joule": perf.tokens_per_joule.mean,
        "tokens_per_second": perf.tokens_per_second.mean,
        "watts": perf.watts.mean,
        "tpot_p90_ms": perf.latency.tpot_ms["p90"],
        "source": perf.source,
        # perf.source is its first window's: a meter that lost its counter mid-run polls after it
        "sources": list(dict.fromkeys(w.source for w in perf.windows)) or [perf.source],
        "slo_met": perf.slo_met,
        "build_seconds": result.build_seconds,
    }
    if quality is not None:
        row |= {
            "ppl_increase": quality.ppl_increase,
            "top1_agreement": quality.top1_agreement,
            "mean_kl": quality.mean_kl,
        }
    return row


def energy_sources(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every energy source the rows were measured with, first seen first (a row's `sources` where
    it has them, else its `source`)."""
    return list(dict.fromkeys(s for row in rows for s in row.get("sources") or [row["source"]]))


def energy_source_line(sources: str | Sequence[str]) -> str:
    """The energy source as every benchmark prints it: an estimate is never called a measurement,
    and rows measured with different sources are never labelled with one of them."""
    listed = [sources] if isinstance(sources, str) else list(dict.fromkeys(sources))
    label = listed[0] if len(listed) == 1 else f"MIXED ({', '.join(listed)}): rows measured differently"
    return f"energy source: {label}" + (
        " (an ESTIMATE from CPU time, not a measurement)"
        if listed == ["estimate"]
        else " (partly an ESTIMATE from CPU time)"
        if "estimate" in listed
        else ""
    )


def slot_engine(
    setup: MeasurementSetup, slots: int, precision: str, cache_dir: Path
) -> tuple[Candidate, SlotEngine]:
    """The slot loop (`loop=slots`, uncompiled) at `slots`, built as `optimize` builds it."""
    from optimizer.backends.registry import build_engine
    from optimizer.backends.torch.slot_server import SlotEngine
    from optimizer.space import Candidate

    target = setup.target
    candidate = Candidate.from_dict(
        {
            "backend": "torch",
            "batch_size": slots,
            "precision": precision,
            "kv_cache": "static",
            "loop": "slots",
            "threads": None if target.is_cuda else target.cores,
        }
    )
    engine = build_engine(setup.model, candidate, target, cache_dir)
    assert isinstance(engine, SlotEngine), candidate.label()
    return candidate, engine


def workload_text(setup: MeasurementSetup, tokens: int) -> list[int]:
    """At least `tokens` of real text: the stream's prompts and the quality text, end to end,
    repeated as often as needed."""
    text = [token for r in setup.stream.requests for token in r.prompt_ids] if setup.stream else []
    text += setup.quality_tokens.flatten().tolist()
    return text * -(-tokens // len(text))


def chat_slot_weights(
    overrides: list[str], slots: int, precision: str
) -> tuple[MeasurementSetup, Candidate, SlotEngine]:
    """The chat workload's setup (Hydra `overrides` on top) and the slot loop's weights, loaded as
    `optimize` loads them: for benchmarks that build their own slot decoders over them."""
    from serving import setup_for

    from optimizer.config import compose_run_config

    cfg = compose_run_config(["workload=chat", *overrides])
    setup = setup_for(cfg, 64)
    candidate, engine = slot_engine(setup, slots, precision, Path(cfg.cache_dir).expanduser())
    return setup, candidate, engine
