"""verify's words: a recipe's trace that cannot be read names the recipe's field (what verify is
given), and one core is "1 core"."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from optimizer import verify
from optimizer.config import TargetConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.stream import TextTokens, read_trace
from optimizer.recipe import write_recipe
from optimizer.target import detect_target
from unit.factories import recipe_data, target_spec


class WordTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


@pytest.fixture
def reads_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_measurement faked down to what reads the trace; the recipe's CPU is this one."""

    def prepare(model_cfg: Any, target_cfg: Any, workload: WorkloadConfig, *args: Any) -> None:
        assert workload.trace
        read_trace(Path(workload.trace), WordTokenizer(), TextTokens(list(range(1000, 1100)), (1,)))
        raise AssertionError("the trace was read without an error")

    def here(cfg: TargetConfig) -> Any:
        return replace(detect_target(cfg), cpu_model="Test CPU", cores=2)

    monkeypatch.setattr(verify, "prepare_measurement", prepare)
    monkeypatch.setattr(verify, "detect_target", here)


def _serving_recipe(folder: Path, trace: Path) -> Path:
    data = recipe_data()
    data["measurement"]["workload"] |= {"kind": "serving", "requests": 32, "trace": str(trace)}
    folder.mkdir(parents=True, exist_ok=True)
    return write_recipe(folder / "recipe.yaml", data)


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        (['{"arrival": 0, "prompt_tokens": 8, "output_tokens": 4, "turn": -1}'], "line 1: turn"),
        (["not json"], "line 1"),
        ([""], ""),  # no requests at all
    ],
)
def test_a_recipes_unreadable_trace_names_the_recipes_field(
    tmp_path: Path, reads_the_trace: None, lines: list[str], field: str
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(UserError) as info:
        verify.verify_recipe(_serving_recipe(tmp_path / "repo", trace))
    assert info.value.field == f"recipe.measurement.workload.trace {field}".rstrip()


def test_other_errors_while_preparing_keep_their_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads_the_trace: None
) -> None:
    def prepare(*args: Any) -> None:
        raise UserError("quality.text", "the text yields no tokens", "use a longer text")

    monkeypatch.setattr(verify, "prepare_measurement", prepare)
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"arrival": 0, "prompt_tokens": 8, "output_tokens": 4}), encoding="utf-8")
    with pytest.raises(UserError) as info:
        verify.verify_recipe(_serving_recipe(tmp_path / "repo", trace))
    assert info.value.field == "quality.text"


@pytest.mark.parametrize(("cores", "measured"), [(1, "Test CPU, 1 core"), (8, "Test CPU, 8 cores")])
def test_the_device_line_counts_cores_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, measured: str
) -> None:
    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(cores=cores))
    monkeypatch.setattr(verify, "prepare_measurement", _must_not_prepare)
    report = verify.verify_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_data()))
    (device,) = [c for c in report.checks if c.name == "device"]
    assert (device.recorded, device.measured) == ("Test CPU, 2 cores", measured)
    assert measured in report.render()


def _must_not_prepare(*args: Any) -> None:
    raise AssertionError("another device is decided before anything is prepared")
