"""A store_path whose file is damaged, read-only or on a full disk is a UserError naming store_path
and the fix (not a traceback after the model loaded), and one with URL characters is that file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from optimizer.errors import UserError
from optimizer.store import TrialStore, open_database


def test_a_store_path_with_url_characters_is_that_file(tmp_path: Path, make_result) -> None:
    result = make_result()
    for folder in ("runs?1", "runs%41"):  # '?' began a query, '%41' was read as 'A'
        path = tmp_path / folder / "trials.db"
        TrialStore(path, "ctx").append(result)
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT COUNT(*) FROM wattsmith_trials").fetchone() == (1,)
        assert TrialStore(path, "ctx").get(result.candidate) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs%41", "runs?1"]


def test_a_store_damaged_past_its_first_pages_is_refused_at_open(
    tmp_path: Path, make_result, make_candidate
) -> None:
    good = tmp_path / "good.db"
    store = TrialStore(good, "ctx")
    for batch_size in range(1, 120):
        store.append(make_result(candidate=make_candidate(batch_size=batch_size)))
    with sqlite3.connect(good) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the file itself
    data = good.read_bytes()
    damaged = tmp_path / "damaged.db"
    # the schema's pages intact (the tables open), the rows' pages overwritten (a bad disk, a copy
    # taken mid-write)
    damaged.write_bytes(data[:8192] + b"\xff" * (len(data) - 8192))
    with pytest.raises(UserError) as info:
        open_database(damaged)  # before the model loads
    assert info.value.field == "store_path"
    assert "damaged.db is damaged" in info.value.problem
    assert "move it aside" in info.value.fix and ".recover" in info.value.fix
    assert TrialStore(good, "ctx").get(make_candidate(batch_size=3)) is not None


def test_a_store_that_cannot_be_written_is_refused_at_open(tmp_path: Path, make_result) -> None:
    path = tmp_path / "trials.db"
    TrialStore(path, "ctx").append(make_result())
    with pytest.raises(UserError) as info:  # a read-only file or mount reads the same way
        open_database(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert info.value.field == "store_path"
    assert "cannot write to" in info.value.problem and "readonly" in info.value.problem
    assert "writable" in info.value.fix


def test_a_disk_that_fills_during_a_run_is_a_user_error(tmp_path: Path, make_result, make_candidate) -> None:
    path = tmp_path / "trials.db"
    store = TrialStore(path, "ctx")
    with sqlite3.connect(path) as connection:
        (pages,) = connection.execute("PRAGMA page_count").fetchone()

    def full_disk(connection: Any, _record: Any) -> None:  # the file may grow no further
        connection.execute(f"PRAGMA max_page_count={pages}")

    event.listen(store._engine, "connect", full_disk)
    store._engine.dispose()  # every connection from now on is made with the limit
    try:
        candidate = make_candidate(batch_size=7)
        with pytest.raises(UserError) as info:
            store.append(make_result(candidate=candidate, reason="x" * 50_000))
        assert info.value.field == "store_path"
        assert "cannot write to" in info.value.problem and "full" in info.value.problem
        assert "free space" in info.value.fix
        assert store.claim(candidate.key(), 60)  # a lost race is still no error: the claim works
        assert not TrialStore(path, "ctx", worker="other:1:x").claim(candidate.key(), 60)
    finally:
        event.remove(store._engine, "connect", full_disk)
        store._engine.dispose()
