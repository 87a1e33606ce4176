"""A store_path that cannot hold the store names store_path, before anything is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.store import TrialStore, open_database, store_url


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        open_database(tmp_path)
    assert info.value.field == "store_path"
    assert "is a directory" in info.value.problem and "trials.db" in info.value.fix


def test_a_store_under_a_file_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError) as info:
        open_database(tmp_path / "afile" / "trials.db")
    assert info.value.field == "store_path"
    assert "cannot create the directory" in info.value.problem


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"these are not the rows you are looking for" * 100)
    with pytest.raises(UserError) as info:
        TrialStore(junk, "ctx")
    assert info.value.field == "store_path"
    assert "file is not a database" in info.value.problem
    assert junk.read_bytes().startswith(b"these are not")


def test_a_good_store_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "trials.db"
    assert open_database(path) is open_database(path)  # one engine per database and process
    assert TrialStore(path, "ctx").run_count() == 0


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true", "sqlite:///x.db?mode=memory"],
)
def test_an_in_memory_sqlite_store_is_refused(url: str) -> None:
    with pytest.raises(UserError) as info:  # each worker would see its own empty database
        store_url(url)
    assert info.value.field == "store_path"
    assert "in memory" in info.value.problem
    assert "store_path=outputs/trials.db" in info.value.fix


def test_a_sqlite_url_with_a_file_is_kept(tmp_path: Path) -> None:
    assert store_url(f"sqlite:///{tmp_path}/t.db") == f"sqlite:///{tmp_path}/t.db"
