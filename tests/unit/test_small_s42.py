"""Three small defects: a config group set to a list, a text holding a lone surrogate escape, and
small figures printed at fixed decimals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from optimizer.cli import main
from optimizer.config.compose import compose_run_config
from optimizer.config.presets import GROUPS, group_options
from optimizer.errors import UserError
from optimizer.measure.text import load_text
from optimizer.measure.workload import Spread
from optimizer.search.progress import progress_line

from .factories import candidate_result, performance_result, quality_result
from .test_verify import measured_here  # noqa: F401  (the fixture: verify with the measuring faked)


def _lists(group: str) -> list[str]:
    return ["[]", f"[{group_options(group)[0]}]", "[a,b]"]


@pytest.mark.parametrize(("group", "value"), [(g, v) for g in GROUPS for v in _lists(g)])
def test_a_group_set_to_a_list_names_the_group_and_its_presets(group: str, value: str) -> None:
    """Hydra reads `space=[]` as no preset (and `space=[a]` as a list of them): the run measured
    the schema's bare defaults (backend torch, not the preset's torch-cb)."""
    with pytest.raises(UserError) as info:
        compose_run_config([f"{group}={value}"])
    assert info.value.field == group
    assert info.value.problem == f"'{value}' is a list: it takes one preset name"
    assert info.value.fix.startswith(f"use one of {group_options(group)}")
    assert ("model=/path/to/hf-dir" in info.value.fix) == (group == "model")


def test_a_group_list_lists_the_users_presets_too(tmp_path: Path) -> None:
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "mine.yaml").write_text("{}\n")
    with pytest.raises(UserError) as info:
        compose_run_config(["space=[mine]"], config_dir=tmp_path)
    assert "'mine'" in info.value.fix and f"yours in {tmp_path}" in info.value.fix


def test_the_cli_refuses_an_empty_group_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space=[]", "--show-config"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(
        "error: space: '[]' is a list: it takes one preset name\n  fix: use one of ["
    )
    assert "backends" not in captured.out


def test_a_plain_preset_name_still_composes() -> None:
    """Only a list is refused: a group's preset given plainly composes as before."""
    assert compose_run_config(["space=gpu-default"]).space.backends == ["torch-cb"]


def _paragraphs(first: str) -> list[str]:
    return [first] + [f"paragraph {i} of some prose" for i in range(12)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_escape_names_the_file_and_the_fix(tmp_path: Path, suffix: str) -> None:
    """json.loads decodes `"\\ud800"` to a str that UTF-8 cannot encode: the text's sha256 raised
    UnicodeEncodeError ('surrogates not allowed')."""
    path = tmp_path / f"text{suffix}"
    entries = [json.dumps({"text": p}) for p in _paragraphs("\ud800")]  # json.dumps writes `\ud800`
    assert "\\ud800" in entries[0]
    path.write_text("\n".join(entries) + "\n" if suffix == ".jsonl" else f"[{','.join(entries)}]")
    with pytest.raises(UserError) as info:
        load_text(str(path))
    assert info.value.field == "quality.text"
    where = f"{path} line 1" if suffix == ".jsonl" else str(path)
    assert info.value.problem.startswith(f"{where}: an entry holds the lone surrogate escape \\ud800")
    assert "surrogate pair" in info.value.fix


def test_a_surrogate_pair_is_a_character(tmp_path: Path) -> None:
    path = tmp_path / "text.jsonl"
    path.write_text("\n".join(json.dumps({"text": p}) for p in _paragraphs("smile \U0001f600")))
    assert load_text(str(path)).quality[0] == "smile \U0001f600"


def _line(tokens_per_joule: float) -> str:
    perf = performance_result(goodput_tokens_per_joule=tokens_per_joule)
    perf = replace(perf, tokens_per_joule=Spread(tokens_per_joule, 0.0, tokens_per_joule, tokens_per_joule))
    result = candidate_result(quality=quality_result(mean_kl=0.001), performance=perf, seconds=1.0)
    return progress_line(1, 2, result, mine=True)


def test_progress_shows_small_tokens_per_joule_to_three_digits() -> None:
    """An 8B model on a CPU makes ~0.01 tok/J: 0.0104 and 0.0096 both read '0.01' at two decimals."""
    assert "| 0.0104 tok/J (goodput 0.0104, estimate)" in _line(0.0104)
    assert "| 0.00960 tok/J (goodput 0.00960, estimate)" in _line(0.0096)
    assert "| 123 tok/J (goodput 123, estimate)" in _line(123.4)


@pytest.fixture
def make_quality() -> Any:
    """The quality verify's faked evaluation measures: a KL that four decimals print as 0.0000."""
    return lambda: quality_result(mean_kl=0.00003)


def test_verify_shows_a_small_kl_to_its_significant_digits(measured_here: Any) -> None:  # noqa: F811
    run, _seen, _lock = measured_here
    check = {c.name: c for c in run().checks}["quality (ppl / top-1 / KL)"]
    assert check.passed
    assert float(check.measured.split(" / ")[2]) == pytest.approx(0.00003)
    assert float(check.recorded.split(" / ")[2]) == pytest.approx(0.001)  # the recipe's
