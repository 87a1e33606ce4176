"""The evals benchmarks' ratios and labels, their measuring faked: cpu_gain averages every round
(not only those where the default met the SLO) and computes its power note from the watts;
slot_spans keeps its output when nothing met the SLO; and rows measured with different energy
sources are labelled mixed, not with the first row's."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

EVALS = Path(__file__).resolve().parents[2] / "evals"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EVALS))  # the scripts import _common as their neighbour
    spec = importlib.util.spec_from_file_location(f"evals_{name}", EVALS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class FakeCandidate:
    name: str
    batch_size: int = 1


def cpu_gain_row(goodput: float, watts: float, source: str, slo_met: bool) -> dict[str, Any]:
    return {
        "label": "x",
        "goodput_tokens_per_joule": goodput,
        "tokens_per_joule": 1.0,
        "tokens_per_second": 10.0,
        "watts": watts,
        "tpot_p90_ms": 50.0,
        "source": source,
        "sources": [source],
        "slo_met": slo_met,
    }


def run_cpu_gain(
    monkeypatch: pytest.MonkeyPatch,
    goodputs: dict[str, list[float]],
    watts: dict[str, float],
    sources: list[str],
) -> None:
    """evals/cpu_gain.py's main over `len(sources)` rounds: round i of side `baseline`/`recipe`
    measures goodputs[side][i] at watts[side] with sources[i]; a goodput of 0 missed the SLO."""
    module = load("cpu_gain", monkeypatch)
    workload = SimpleNamespace(idle_seconds=0.0)
    recipe = SimpleNamespace(workload=workload, target=None, quality=None, candidate=FakeCandidate("recipe"))
    setup = SimpleNamespace(
        target=SimpleNamespace(cpu_model="cpu", cores=2),
        model=SimpleNamespace(
            name="m", weight_sha256="0", shape=SimpleNamespace(checkpoint_precision="fp32")
        ),
        meter=None,
    )
    done = {"baseline": 0, "recipe": 0}

    def evaluate(candidate: FakeCandidate, role: str) -> Any:
        return SimpleNamespace(candidate=candidate, quality=None)

    def measured_row(result: Any) -> dict[str, Any]:
        side = result.candidate.name
        index = done[side]
        done[side] += 1
        goodput = goodputs[side][index]
        return cpu_gain_row(goodput, watts[side], sources[index], goodput > 0)

    monkeypatch.setattr("optimizer.cli._setup_logging", lambda: None)
    monkeypatch.setattr(module, "read_recipe", lambda path: recipe)
    monkeypatch.setattr(module, "default_cache_dir", lambda: Path("/nonexistent"))
    monkeypatch.setattr(module, "model_config_for", lambda *a: None)
    monkeypatch.setattr(module, "prepare_measurement", lambda *a: setup)
    monkeypatch.setattr(module, "check_weights", lambda *a: None)
    monkeypatch.setattr(module, "baseline_candidate", lambda *a, **k: FakeCandidate("baseline"))
    monkeypatch.setattr(module, "measure_idle_watts", lambda *a: 3.0)
    monkeypatch.setattr(
        module, "Evaluator", SimpleNamespace(for_setup=lambda s: SimpleNamespace(evaluate=evaluate))
    )
    monkeypatch.setattr(module, "measured_row", measured_row)
    monkeypatch.setattr(sys, "argv", ["cpu_gain.py", "--rounds", str(len(sources))])
    module.main()


def ratio_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("RATIO goodput"))


def test_cpu_gain_ratio_counts_the_rounds_the_default_missed_the_slo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the default met the SLO in round 1 only: the ratio read 2.0x, round 1's alone, while the
    # table averaged all three rounds (recipe 2.667, default 0.333 goodput tok/J: 8.0x)
    run_cpu_gain(
        monkeypatch,
        {"baseline": [1.0, 0.0, 0.0], "recipe": [2.0, 3.0, 3.0]},
        {"baseline": 10.0, "recipe": 10.0},
        ["estimate"] * 3,
    )
    out = capsys.readouterr().out
    line = ratio_line(out)
    assert "recipe / default: 8.0x" in line
    assert "all 3 rounds" in line
    assert "SLO met by the default in 1 of 3, the recipe in 3 of 3" in line
    assert "2.0x, n/a (default goodput 0), n/a (default goodput 0)" in line
    assert "means over all 3 rounds" in out
    table = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("baseline", "recipe "))
    }
    assert table["baseline"][-3:] == ["1", "of", "3"]
    assert table["recipe"][-3:] == ["3", "of", "3"]


def test_cpu_gain_ratio_when_the_default_met_the_slo_every_round(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cpu_gain(
        monkeypatch,
        {"baseline": [1.0, 1.0], "recipe": [2.0, 4.0]},
        {"baseline": 10.0, "recipe": 10.0},
        ["rapl"] * 2,
    )
    line = ratio_line(capsys.readouterr().out)
    assert "recipe / default: 3.0x" in line
    assert "SLO met by the default in 2 of 2, the recipe in 2 of 2" in line


def test_cpu_gain_power_note_is_computed_from_both_sides_watts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # measured: recipe 12.9 W, default 10.0 W; the note asserted both drew about the same power
    run_cpu_gain(
        monkeypatch,
        {"baseline": [1.0], "recipe": [2.0]},
        {"baseline": 10.0, "recipe": 12.9},
        ["estimate"],
    )
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("NOTE"))
    assert "recipe 12.9 W, default 10.0 W" in note
    assert "not equal" in note and "x 0.78" in note
    assert "about as busy" not in note


def test_cpu_gain_power_note_about_equal_when_the_watts_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cpu_gain(
        monkeypatch,
        {"baseline": [1.0], "recipe": [2.0]},
        {"baseline": 10.0, "recipe": 10.2},
        ["estimate"],
    )
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("NOTE"))
    assert "recipe 10.2 W, default 10.0 W" in note and "about equal" in note


def test_cpu_gain_labels_rounds_measured_with_different_sources_mixed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the counter stopped after round 1: round 2 polled power, and the label read 'nvml'
    run_cpu_gain(
        monkeypatch,
        {"baseline": [1.0, 1.0], "recipe": [2.0, 2.0]},
        {"baseline": 10.0, "recipe": 10.0},
        ["nvml", "nvml-power-poll"],
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("energy source"))
    assert "MIXED (nvml, nvml-power-poll)" in line


def test_energy_source_line_lists_every_source(monkeypatch: pytest.MonkeyPatch) -> None:
    common = load("_common", monkeypatch)
    rows = [{"source": "nvml"}, {"source": "nvml", "sources": ["nvml", "nvml-power-poll"]}]
    assert common.energy_sources(rows) == ["nvml", "nvml-power-poll"]
    assert "MIXED (nvml, nvml-power-poll)" in common.energy_source_line(common.energy_sources(rows))
    assert common.energy_source_line(["rapl", "rapl"]) == "energy source: rapl"
    assert common.energy_source_line("estimate").endswith("(an ESTIMATE from CPU time, not a measurement)")
    mixed = common.energy_source_line(["rapl", "estimate"])
    assert "MIXED (rapl, estimate)" in mixed and "ESTIMATE" in mixed.split(")", 1)[1]


def test_measured_row_keeps_every_window_source(monkeypatch: pytest.MonkeyPatch) -> None:
    common = load("_common", monkeypatch)
    spread = SimpleNamespace(mean=1.0)
    perf = SimpleNamespace(
        goodput_tokens_per_joule=spread,
        tokens_per_joule=spread,
        tokens_per_second=spread,
        watts=spread,
        latency=SimpleNamespace(tpot_ms={"p90": 5.0}),
        source="nvml",  # the first window's
        windows=[SimpleNamespace(source=s) for s in ("nvml", "nvml-power-poll", "nvml-power-poll")],
        slo_met=False,
    )
    result = SimpleNamespace(
        candidate=SimpleNamespace(label=lambda: "c", to_dict=lambda: {}),
        performance=perf,
        quality=None,
        build_seconds=0.0,
    )
    row = common.measured_row(result)
    assert row["sources"] == ["nvml", "nvml-power-poll"] and row["slo_met"] is False
    assert "MIXED" in common.energy_source_line(common.energy_sources([row]))


def test_backends_summary_sources_are_every_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    summarize = load("backends", monkeypatch).summarize
    rounds = [
        {
            name: {
                "label": name,
                "source": s,
                "sources": [s],
                "tokens_per_joule": 1.0,
                "goodput_tokens_per_joule": 1.0,
                "tokens_per_second": 1.0,
            }
            for name in ("default", "torch")
        }
        for s in ("nvml", "nvml-power-poll")
    ]
    summary = summarize(rounds, {"default": None, "torch": None})
    assert summary["torch"]["sources"] == ["nvml", "nvml-power-poll"]


def test_backends_goodput_ratio_counts_rounds_the_default_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default met the SLO in one round of two: the ratio of means is 2.5 / 0.5, not the one
    # defined round's 2.0 (a mean of per-round ratios dropped the round that favours the contender)
    summarize = load("backends", monkeypatch).summarize
    goodput = {"default": (1.0, 0.0), "torch": (2.0, 3.0)}
    rounds = [
        {
            name: {
                "label": name,
                "source": "rapl",
                "tokens_per_joule": 1.0,
                "goodput_tokens_per_joule": goodput[name][i],
                "tokens_per_second": 1.0,
            }
            for name in goodput
        }
        for i in range(2)
    ]
    summary = summarize(rounds, {"default": None, "torch": None})
    assert summary["torch"]["goodput_ratio"] == pytest.approx(5.0)
    assert summary["torch"]["goodput_ratio_rounds"] == [2.0]


class FakeEngine:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.model, self.compiled = None, False
        self.decoder = SimpleNamespace(max_len=64, spans=[64])

    def reserve(self, tokens: int) -> None:
        pass

    def close(self) -> None:
        pass


def run_slot_spans(
    monkeypatch: pytest.MonkeyPatch, out: Path, goodput: dict[str, float], source: dict[str, str]
) -> None:
    """evals/slot_spans.py's main over 2 stream rounds: each server's rounds measure `goodput[name]`
    goodput tok/J with `source[name]` (0: nothing met the SLO)."""
    module = load("slot_spans", monkeypatch)
    workload = SimpleNamespace(
        idle_seconds=0.0, slo=None, warmup_requests=0, drain_requests=0, requests=1, rate=1.0
    )
    request = SimpleNamespace(prompt_ids=(1, 2, 3), max_new_tokens=4)
    setup = SimpleNamespace(
        stream=SimpleNamespace(requests=[request]),
        target=SimpleNamespace(device="cpu", name="cpu"),
        meter=None,
        model=SimpleNamespace(name="m"),
    )
    candidate = SimpleNamespace(label=lambda: "c", to_dict=lambda: {"batch_size": 2})
    spans = FakeEngine()
    names = {id(spans): "spans"}

    def serve_stream(server: Any, *args: Any) -> Any:
        name = names.get(id(server), "whole region")
        return SimpleNamespace(
            window=SimpleNamespace(goodput_tokens=goodput[name], output_tokens=10),
            measurement=SimpleNamespace(joules=1.0, seconds=1.0),
            name=name,
        )

    def row(candidate: Any, runs: list[Any], *args: Any) -> dict[str, Any]:
        rounds = [{"goodput_tokens_per_joule": goodput[r.name], "tokens_per_second": 10.0} for r in runs]
        return {
            "source": source[runs[0].name],
            "sources": [source[runs[0].name]],
            "goodput_tokens_per_joule": goodput[runs[0].name],
            "tokens_per_joule": 10.0,
            "tokens_per_second": 10.0,
            "ttft_p90_ms": 1.0,
            "tpot_p90_ms": 1.0,
            "summary": {"met_slo_fraction": 0.0},
            "rounds": rounds,
        }

    offline = [{"tokens": 10, "seconds": 1.0, "cpu_seconds": 1.0, "cpu_ms_per_token": 100.0}]
    cfg = SimpleNamespace(cache_dir="/nonexistent", workload=workload)
    monkeypatch.setattr(module, "compose_run_config", lambda overrides: cfg)
    monkeypatch.setattr(module, "setup_for", lambda *a: setup)
    monkeypatch.setattr(module, "slot_engine", lambda *a: (candidate, spans))
    monkeypatch.setattr(module, "SlotEngine", FakeEngine)
    monkeypatch.setattr(module, "answers", lambda server, asked: [(1,)] * len(asked))
    monkeypatch.setattr(module, "offline_rounds", lambda *a: {"spans": offline, "whole region": offline})
    monkeypatch.setattr(module, "measure_idle_watts", lambda *a: 3.0)
    monkeypatch.setattr(module, "serve_stream", serve_stream)
    monkeypatch.setattr(module, "step_table", lambda *a: [])
    monkeypatch.setattr(module, "row", row)
    monkeypatch.setattr(
        sys, "argv", ["slot_spans.py", "--rounds", "2", "--offline-rounds", "1", "--out", str(out)]
    )
    module.main()


def test_slot_spans_keeps_its_output_when_nothing_met_the_slo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the whole region met no SLO: ZeroDivisionError before --out was written, the run lost
    run_slot_spans(
        monkeypatch, tmp_path, {"spans": 2.0, "whole region": 0.0}, {"spans": "rapl", "whole region": "rapl"}
    )
    written = json.loads((tmp_path / "slot_spans.json").read_text())
    assert written["ratios"]["stream goodput_tokens_per_joule"] == [None, None]
    assert written["ratios"]["stream tokens_per_second"] == [1.0, 1.0]
    out = capsys.readouterr().out
    assert "RATIO spans / whole region, stream goodput_tokens_per_joule: n/a (rounds n/a, n/a)" in out
    assert (
        out.splitlines()[-1]
        == "RATIO spans / whole region, stream tokens_per_second: 1.000x (rounds 1.000, 1.000)"
    )


def test_slot_spans_labels_servers_measured_with_different_sources_mixed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_slot_spans(
        monkeypatch,
        tmp_path,
        {"spans": 2.0, "whole region": 1.0},
        {"spans": "nvml", "whole region": "nvml-power-poll"},
    )
    out = capsys.readouterr().out
    assert "energy source: MIXED (nvml, nvml-power-poll)" in out
    assert "stream goodput_tokens_per_joule: 2.000x" in out
