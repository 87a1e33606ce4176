"""Accounting defects: the serving section's subsections of estimated joules carry the ESTIMATE
mark, and a currency the roll-up cannot print after a cost is refused naming the field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import AccountingConfig
from optimizer.errors import UserError
from optimizer.measure.workload import ServingSummary
from optimizer.report.markdown import estimate_mark
from optimizer.report.serving import serving_section
from optimizer.results import MEASURED, CandidateResult
from optimizer.space import Candidate
from unit.factories import performance_result, quality_result

CURVE = [
    {"rate": 1.0, "goodput_tokens_per_joule": 1.0, "ttft_p90_ms": 100.0, "tpot_p90_ms": 10.0},
    {"rate": 2.0, "goodput_tokens_per_joule": 1.1, "ttft_p90_ms": 150.0, "tpot_p90_ms": 12.0},
]


def served(sharing: bool, joules_per_request: float) -> CandidateResult:
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=10,
        window_requests=10,
        met_slo_fraction=1.0,
        joules_per_request=joules_per_request,
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
        prefix={"prefill_saved_fraction": 0.3, "hits": 3, "lookups": 10},
        curve=CURVE,
    )
    perf = replace(performance_result(source="estimate"), serving=serving)
    candidate = Candidate(ContinuousBatchingSettings(prefix_sharing=sharing), 8, 4)
    return CandidateResult(candidate, MEASURED, quality=quality_result(), performance=perf)


def caption_under(lines: list[str], heading: str) -> str:
    return next(line for line in lines[lines.index(heading) + 1 :] if line)


def test_the_prefix_and_load_curve_subsections_of_an_estimate_are_marked(tmp_path: Path) -> None:
    """Their J/request and tokens/J are the estimate's joules: each caption says so, as every
    other table's of an estimate does (the prefix table's J/request read as a measurement)."""
    lines = serving_section([served(True, 6.0), served(False, 8.0)], tmp_path, estimate_mark("estimate"))
    assert "| torch-cb bf16 mbt256 prefix b8 t4 | 6 | 8 | 25% |" in "\n".join(lines)
    for heading in ("## Serving the stream", "### Prefix KV reuse", "### Load curves"):
        assert caption_under(lines, heading).startswith("**ESTIMATE**"), heading
    measured = serving_section([served(True, 6.0), served(False, 8.0)], tmp_path, estimate_mark("rapl"))
    assert "ESTIMATE" not in "\n".join(measured)


@pytest.mark.parametrize("currency", ["", "  ", "US|D", "US\nD"])
def test_a_currency_the_cost_cannot_be_printed_with_is_refused(currency: str) -> None:
    """Blank, the roll-up's cost read `0.0125` with no unit ("0.15 /kWh"); a pipe split its cell."""
    with pytest.raises(UserError) as info:
        AccountingConfig(currency=currency)
    assert info.value.field == "accounting.currency"
    assert "e.g. USD" in str(info.value)


@pytest.mark.parametrize("currency", ["USD", "EUR", "€", "KRW"])
def test_a_currency_code_or_symbol_is_kept(currency: str) -> None:
    assert AccountingConfig(currency=currency).currency == currency


def test_an_empty_currency_override_is_refused_when_composing() -> None:
    from optimizer.config.compose import compose_run_config

    with pytest.raises(UserError, match="accounting.currency"):
        compose_run_config(["target=cpu", "accounting.currency="])
