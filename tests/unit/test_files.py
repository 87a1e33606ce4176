"""write_atomically: the whole new text or the old file, never a mix, and no temporary left."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import files
from optimizer.files import write_atomically


def test_the_new_text_replaces_the_old_and_no_temporary_is_left(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("old")
    assert write_atomically(path, "new") == path
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("every row of the last run\n")

    def crash(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "half of the")
    assert path.read_text() == "every row of the last run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]
