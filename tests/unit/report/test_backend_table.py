"""The report's backend table: best feasible candidate per backend, and why a backend has none."""

from __future__ import annotations

from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.report.backend_table import backends_section, best_per_backend
from optimizer.results import FAILED, REJECTED
from optimizer.space import Candidate


def test_one_row_per_backend_with_its_best(
    make_result, make_candidate, make_quality, make_performance
) -> None:
    base = make_result(
        candidate=make_candidate(batch_size=1),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(goodput_tokens_per_joule=2.0),
    )
    genai_slow = make_result(
        candidate=Candidate(OrtGenaiSettings(), 1, 2),
        quality=make_quality(),
        performance=make_performance(3.0),
    )
    genai_fast = make_result(
        candidate=Candidate(OrtGenaiSettings(precision="int8", accuracy_level=4), 8, 2),
        quality=make_quality(mean_kl=0.004, ppl_increase=0.009, top1_agreement=0.967),
        performance=make_performance(8.0, tokens_per_second=52.0),
    )
    genai_slo = make_result(
        candidate=Candidate(OrtGenaiSettings(), 64, 2),
        quality=make_quality(),
        performance=make_performance(20.0, slo_violations=["TPOT p90 900 ms > workload.slo.tpot_ms 250"]),
    )
    int4 = make_result(
        candidate=Candidate(OrtGenaiSettings(precision="int4", accuracy_level=4), 1, 2),
        status=REJECTED,
        reason="top-1 63% < quality.min_top1_agreement 95%",
        quality=make_quality(mean_kl=0.4),
    )
    onnx_failed = make_result(
        candidate=Candidate(OrtOnnxSettings(quantization="int8-static"), 1, 2),
        status=FAILED,
        reason="boom | bang",
    )
    results = [base, genai_slow, genai_fast, genai_slo, int4, onnx_failed]
    excluded = [(Candidate(TensorRTSettings(), 1, 0), "TensorRT engines need an NVIDIA GPU target")]

    best = best_per_backend(results)
    assert list(best) == ["torch", "ort-genai", "ort-onnx"]
    assert best["ort-genai"] is genai_fast  # not the faster SLO-missing batch 64
    assert best["ort-onnx"] is None

    text = "\n".join(backends_section(results, excluded, base))
    assert "## Backends side by side" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "ort-genai int8 default g32 acc4 b8 t2 | 8.00 | 4.00× | 52.0" in rows["ort-genai"]
    assert "+0.90% | 96.7% | 0.00400 | 3 / 1 / 0 / 0 / 0" in rows["ort-genai"]
    assert "none feasible: failed (e.g. ort-onnx fp32 int8-static b1 t2: boom / bang)" in rows["ort-onnx"]
    assert "none feasible: TensorRT engines need an NVIDIA GPU target" in rows["tensorrt"]
    assert "0 / 0 / 0 / 0 / 1" in rows["tensorrt"]


def test_no_table_for_a_single_backend(make_result, make_candidate, make_quality, make_performance) -> None:
    base = make_result(candidate=make_candidate(), quality=make_quality(), performance=make_performance())
    assert backends_section([base], [], base) == []


def test_ratio_falls_back_to_all_tokens_when_the_baseline_misses_the_slo(
    make_result, make_candidate, make_quality, make_performance
) -> None:
    base = make_result(
        candidate=make_candidate(),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(0.0, slo_violations=["TPOT p90 351 ms > x"]),
    )
    genai = make_result(
        candidate=Candidate(OrtGenaiSettings(), 1, 2),
        quality=make_quality(),
        performance=make_performance(5.0),
    )
    text = "\n".join(backends_section([base, genai], [], base))
    assert "(all tokens: baseline misses the SLO)" in text
    assert "none feasible: misses the SLO (e.g. torch fp32 kv=dynamic b1 t4: TPOT p90 351 ms > x)" in text


def test_a_near_miss_that_won_shows_its_re_measurement(
    make_result, make_candidate, make_quality, make_performance
) -> None:
    """The search measured the winner outside the SLO and its finalist rounds inside: the table and
    the Pareto front take the re-measurement, marked, instead of calling the selection infeasible."""
    from dataclasses import replace

    from optimizer.select import pareto_front, with_selected

    base = make_result(
        candidate=make_candidate(batch_size=1),
        role="baseline",
        quality=make_quality(),
        performance=make_performance(goodput_tokens_per_joule=2.0),
    )
    late = ["TTFT p90 2375 ms > workload.slo.ttft_ms 2000"]
    searched = make_result(
        candidate=Candidate(OrtGenaiSettings(), 16, 2),
        quality=make_quality(),
        performance=make_performance(9.5, slo_violations=late),
    )
    remeasured = replace(searched, role="finalist", performance=make_performance(10.2))
    results = [base, searched]
    assert with_selected(results, None) == results
    assert (
        with_selected(results, replace(remeasured, performance=make_performance(9.0, slo_violations=late)))
        == results
    )
    shown = with_selected(results, remeasured)
    assert shown == [base, remeasured]
    assert pareto_front(results) == [base] and remeasured in pareto_front(shown)
    rows = [line for line in backends_section(shown, [], base) if line.startswith("| ort-genai")]
    assert rows and "ort-genai fp32 b16 t2 (finalist re-measurement) | 10.2 | 5.10×" in rows[0]
    # a feasible search row stays as the search measured it, even when its finalist rounds differ
    feasible = replace(searched, performance=make_performance(9.5))
    assert with_selected([base, feasible], remeasured) == [base, feasible]
