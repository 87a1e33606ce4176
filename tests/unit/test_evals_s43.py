"""The evals benchmarks' verdicts, their measuring faked: a benchmark whose baseline was not measured
exits non-zero instead of printing 'n/a' with status 0."""

from __future__ import annotations

import importlib.util
import sys
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


def row(goodput: float) -> dict[str, Any]:
    return {
        "label": "x",
        "goodput_tokens_per_joule": goodput,
        "tokens_per_joule": goodput,
        "tokens_per_second": 10.0,
        "watts": 10.0,
        "tpot_p90_ms": 50.0,
        "source": "estimate",
    }


def run_parallelism(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    excluded: Any = lambda candidate: None,
    goodput: Any = lambda candidate: 1.0,
) -> None:
    """evals/parallelism.py's main on a fake 2-core CPU: `excluded(candidate)` is the rules'
    reason, `goodput(candidate)` the measured figure (None: the measurement failed)."""
    module = load("parallelism", monkeypatch)
    target = SimpleNamespace(is_cuda=False, cores=2, bf16=True, cpu_model="cpu")
    setup = SimpleNamespace(target=target, model=SimpleNamespace(name="m", shape=None), meter=None)

    def evaluate(candidate: Any, role: str) -> Any:
        value = goodput(candidate)
        return SimpleNamespace(performance=None if value is None else value, reason="it broke")

    evaluator = SimpleNamespace(evaluate=evaluate)
    monkeypatch.setattr(module, "prepare_measurement", lambda *a, **k: setup)
    monkeypatch.setattr(module, "measure_idle_watts", lambda *a: 3.0)
    monkeypatch.setattr(module, "Evaluator", SimpleNamespace(for_setup=lambda s: evaluator))
    monkeypatch.setattr(module, "exclusion_reason", lambda c, *a: excluded(c))
    monkeypatch.setattr(module, "memory_fit_reason", lambda *a: None)
    monkeypatch.setattr(module, "measured_row", lambda result: row(result.performance))
    monkeypatch.setattr(sys, "argv", ["parallelism.py", "--rounds", "1", *argv])
    module.main()


def one_process(candidate: Any) -> bool:
    return bool(candidate.processes == 1)


def test_parallelism_fails_when_the_one_process_baseline_is_excluded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--processes 3` on 2 cores: every layout excluded, no ratio, and it exited 0
    with pytest.raises(SystemExit) as exit_:
        run_parallelism(monkeypatch, ["--processes", "3"], excluded=lambda c: "3 > 2 cores")
    assert exit_.value.code not in (None, 0)
    assert "not measured" in str(exit_.value.code)


def test_parallelism_fails_when_the_one_process_baseline_failed_to_measure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_parallelism(monkeypatch, [], goodput=lambda c: None if one_process(c) else 2.0)
    assert exit_.value.code not in (None, 0)


def test_parallelism_baseline_that_met_no_slo_is_a_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_parallelism(monkeypatch, [], goodput=lambda c: 0.0 if one_process(c) else 2.0)
    assert "RATIO best layout vs 1 process x all threads: n/a" in capsys.readouterr().out


def test_parallelism_ratio_is_best_over_one_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_parallelism(monkeypatch, [], goodput=lambda c: 1.0 if one_process(c) else 2.0)
    assert "RATIO best layout vs 1 process x all threads: 2.0x" in capsys.readouterr().out.splitlines()[-1]


def rounds(*goodputs: float) -> dict[str, Any]:
    return {"rounds": [{"goodput_tokens_per_joule": g} for g in goodputs]}


def test_serving_ratio_claims_no_gain_when_neither_met_the_slo(monkeypatch: pytest.MonkeyPatch) -> None:
    ratio = load("serving", monkeypatch).ratio
    # both 0 in every round: it read 'inf', an infinite gain nothing measured
    assert ratio({"selected": rounds(0.0, 0.0), "hf-default": rounds(0.0, 0.0)}, "hf-default").startswith(
        "n/a"
    )
    partly = ratio({"selected": rounds(0.0, 4.0), "hf-default": rounds(0.0, 2.0)}, "hf-default")
    assert partly == "2.0x (1 of 2 rounds: both 0 in the rest)"


def test_serving_ratio_is_selected_over_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    ratio = load("serving", monkeypatch).ratio
    assert ratio({"selected": rounds(4.0, 6.0), "hf-default": rounds(2.0, 2.0)}, "hf-default") == "2.5x"
    assert ratio({"selected": rounds(4.0), "hf-default": rounds(0.0)}, "hf-default") == "inf"


def run_llamacpp_builds(monkeypatch: pytest.MonkeyPatch, measured: dict[str, Any]) -> None:
    module = load("llamacpp_builds", monkeypatch)
    monkeypatch.setattr(module, "measure", lambda site, gguf: measured)
    monkeypatch.setattr(sys, "argv", ["llamacpp_builds.py", "--rounds", "1", "--gguf", "m.gguf", "a=/x"])
    module.main()


def test_llamacpp_builds_fails_when_no_build_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    # a missing --gguf fails every child: it printed the failures and exited 0
    with pytest.raises(SystemExit) as exit_:
        run_llamacpp_builds(monkeypatch, {"failed": ["ValueError: Model path does not exist: m.gguf"]})
    assert exit_.value.code not in (None, 0)


def test_llamacpp_builds_table_when_a_build_ran(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_llamacpp_builds(monkeypatch, {"pp": [2.0], "tg": [3.0], "b16": [4.0], "nll": 1.5})
    assert capsys.readouterr().out.splitlines()[-1].split() == [
        "a",
        "2.0",
        "3.0",
        "4.0",
        "1.5000",
        "1.00",
        "1.00",
        "1.00",
    ]
