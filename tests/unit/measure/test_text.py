"""Evaluation text: splits, file formats, token windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.measure.text import load_text, token_windows


def test_txt_paragraphs_are_split_and_every_fifth_held_out(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(12)) + "\n\n\n")
    splits = load_text(str(path))
    assert splits.quality == ["paragraph 0", "paragraph 5", "paragraph 10"]
    assert len(splits.workload) == 9 and "paragraph 1" in splits.workload
    assert not set(splits.quality) & set(splits.workload)
    assert len(splits.sha256) == 64
    assert load_text(str(path)).sha256 == splits.sha256


def test_json_and_jsonl(tmp_path: Path) -> None:
    items = [{"text": f"t{i}"} for i in range(10)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "b.json").write_text(json.dumps({f"k{i}": {"extract": f"t{i}"} for i in range(10)}))
    (tmp_path / "c.json").write_text(json.dumps([f"t{i}" for i in range(10)]))
    for name in ("a.jsonl", "b.json", "c.json"):
        assert load_text(str(tmp_path / name)).quality == ["t0", "t5"], name


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("short.txt", "one\n\ntwo\n\nthree"),
        ("bad.jsonl", "\n".join(json.dumps({"body": "x"}) for _ in range(10))),
    ],
)
def test_bad_text_is_a_user_error(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path / name))
    assert info.value.field == "quality.text"


def test_missing_text_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path / "none.txt"))
    assert info.value.field == "quality.text"


def test_packaged_wiki_text() -> None:
    splits = load_text("wiki")
    assert len(splits.quality) > 1000
    assert len(splits.workload) == pytest.approx(4 * len(splits.quality), rel=0.01)


class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_token_windows_are_exact_and_consecutive() -> None:
    windows = token_windows(CharTokenizer(), ["abcdef", "ghij"], length=3, count=3, field="x")
    assert windows == [[97, 98, 99], [100, 101, 102], [10, 10, 103]]  # paragraphs joined by a blank line


def test_token_windows_need_enough_text() -> None:
    with pytest.raises(UserError) as info:
        token_windows(CharTokenizer(), ["abc"], length=4, count=2, field="quality.num_sequences")
    assert info.value.field == "quality.num_sequences"
