"""The load curve's loads as the stream offered them: a point records its stream's own rate (first
to last arrival, which a short random stream's differs from the nominal workload.rates) and the
rate its runs actually submitted at; the report shows them beside the nominal one, draws the curve
at the offered rate and flags a point whose submissions lagged."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from optimizer.config import LengthConfig, WorkloadConfig
from optimizer.measure import load, serving
from optimizer.measure.stream import RequestStream, TextTokens, generate_stream
from optimizer.report.serving import plot_load, serving_section, workload_line
from optimizer.results import MEASURED, CandidateResult

from .factories import quality_result, torch_candidate
from .test_numbers_s42 import _served, _window
from .test_serving_cancelled import Fifo, Meter


@pytest.fixture(autouse=True)
def _no_cpu_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    real = serving.serve_stream
    monkeypatch.setattr(load, "serve_stream", lambda *a, **k: real(*a, **k, probe=lambda: 1000.0))


def _cfg(rate: float, rates: list[float], arrivals: str, requests: int = 12) -> WorkloadConfig:
    return WorkloadConfig(
        kind="serving",
        rate=rate,
        rates=rates,
        requests=requests,
        repeats=1,
        arrivals=arrivals,
        warmup_requests=2,
        drain_requests=2,
        prompt_lengths=LengthConfig("fixed", 8, 1, 64),
        output_lengths=LengthConfig("fixed", 4, 1, 64),
    )


def _streams(cfg: WorkloadConfig) -> dict[float, RequestStream]:
    return {r: generate_stream(cfg, TextTokens(list(range(100, 200))), r) for r in cfg.load_rates()}


class SlowSubmit(Fifo):
    """A submit that blocks 40 ms (a busy host's load generator): past 25 req/s it falls behind."""

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        time.sleep(0.04)
        return super().submit(prompt_ids, max_new_tokens)


def test_each_load_curve_point_records_its_streams_offered_rate() -> None:
    """A 12-request Poisson stream at nominal 20 and 40 req/s offers neither exactly."""
    cfg = _cfg(40.0, [20.0, 40.0], "poisson")
    streams = _streams(cfg)
    perf = load.measure_load(Fifo(), 1, streams, Meter(), cfg)  # type: ignore[arg-type]
    assert perf.serving is not None
    curve = perf.serving.curve
    assert [p["rate"] for p in curve] == [20.0, 40.0]
    for point in curve:
        offered = streams[point["rate"]].offered_rate
        assert offered != pytest.approx(point["rate"], rel=0.01)  # the stream's own, not the nominal
        assert point["offered_rate"] == offered
        assert 0 < point["submitted_rate"] <= 1.5 * offered


def test_a_point_whose_submissions_lagged_is_flagged_in_the_report(tmp_path: Path) -> None:
    """At 50 req/s a 40 ms submit holds the generator near 25 req/s: the load measured is not the
    load named. At 10 req/s it keeps up."""
    cfg = _cfg(50.0, [10.0, 50.0], "constant")
    perf = load.measure_load(SlowSubmit(), 1, _streams(cfg), Meter(), cfg)  # type: ignore[arg-type]
    assert perf.serving is not None
    low, high = perf.serving.curve
    assert low["submitted_rate"] == pytest.approx(low["offered_rate"], rel=0.05)
    assert high["submitted_rate"] < 0.7 * high["offered_rate"]
    result = CandidateResult(torch_candidate(), MEASURED, quality=quality_result(), performance=perf)
    lines = serving_section([result], tmp_path, "")
    (row,) = [line for line in lines if line.startswith("| torch") and line.count("|") == 12]
    assert "submissions lagged" in row  # the serving table's row, at the selection rate
    points = [line for line in lines if line.startswith("| torch") and line.count("|") == 8]
    assert len(points) == 2
    assert "submissions lagged" not in points[0] and "submissions lagged" in points[1]
    assert points[1].startswith(f"| {result.candidate.label()} | 50 | 50 | ")


def _with_curve(offered: float, submitted: float) -> CandidateResult:
    """A candidate selected at nominal 2 req/s whose stream offered `offered` req/s."""
    result = _served(8, [_window(10.0, 100)], 10)
    assert result.performance is not None and result.performance.serving is not None
    s = result.performance.serving
    point = load.curve_point(result.performance, submitted)
    selected = {**point, "rate": 2.0, "offered_rate": offered}
    low = {**point, "rate": 1.0, "offered_rate": offered / 2, "submitted_rate": offered / 2}
    s = dataclasses.replace(s, rate=2.0, offered_rate=offered, curve=[low, selected], capacity_rate=2.0)
    return dataclasses.replace(result, performance=dataclasses.replace(result.performance, serving=s))


def test_the_serving_table_shows_the_offered_rate_beside_the_nominal_capacity(tmp_path: Path) -> None:
    lines = serving_section([_with_curve(1.78, 1.78)], tmp_path, "")
    (row,) = [line for line in lines if line.startswith("| torch") and line.count("|") == 12]
    assert "| 2 (offered 1.78) |" in row
    assert "lagged" not in "\n".join(lines)
    points = [line for line in lines if line.startswith("| torch") and line.count("|") == 8]
    assert points[1].startswith("| torch") and "| 2 | 1.78 | 1.78 |" in points[1]


def test_the_load_plot_is_drawn_at_the_offered_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: saved.append(self))
    plot_load(Path("unused.png"), [_with_curve(1.78, 1.78)])
    for axes in saved[0].axes:
        assert list(axes.get_lines()[0].get_xdata()) == [0.89, 1.78]
        assert "arrivals" in axes.get_xlabel()


def test_the_workload_line_names_the_rate_the_stream_offers() -> None:
    cfg = _cfg(40.0, [], "poisson")
    stream = _streams(cfg)[40.0]
    line = workload_line(cfg, stream)
    assert f"selected at 40 req/s; its arrivals offer {stream.offered_rate:.3g} req/s;" in line
