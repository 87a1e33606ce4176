"""Workers on one store, SQLite and a real PostgreSQL server: no candidate is measured twice, a
killed worker loses nothing and its candidate is taken over."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from optimizer.results import FAILED, MEASURED
from optimizer.store import TrialStore, store_url, trials_table

from . import fake_worker


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "trials.db")
    # one database per test on the session's server: a fresh schema, no leftovers
    server = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(store_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


def stored_keys(url: str) -> list[str]:
    """Candidate keys of every row, read past the store's own code."""
    engine = create_engine(store_url(url))
    with engine.connect() as connection:
        keys = [row[0] for row in connection.execute(select(trials_table.c.candidate_key))]
    engine.dispose()
    return keys


@pytest.mark.parametrize("sampler", ["grid", "optuna"])
def test_two_workers_never_measure_a_candidate_twice(url: str, sampler: str) -> None:
    run_id = "two-workers"
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        futures = [pool.submit(fake_worker.run, url, run_id, sampler, 0.2) for _ in range(2)]
        first, second = (future.result(timeout=300) for future in futures)
    everything = {c.key() for c in fake_worker.space()}
    assert not set(first) & set(second)  # disjoint: nobody measured what the other did
    assert set(first) | set(second) == everything
    assert first and second  # both worked
    keys = stored_keys(url)
    assert sorted(keys) == sorted(everything)  # one row per candidate, none lost or doubled
    store = TrialStore(url, "ctx", run_id=run_id)
    assert store.run_count() == len(everything)
    assert store.claims_held() == 0


def test_a_killed_worker_loses_nothing_and_its_candidate_is_taken_over(url: str) -> None:
    TrialStore(url, "ctx")  # the tables, before polling them
    spawn = multiprocessing.get_context("spawn")
    victim = spawn.Process(target=fake_worker.run, args=(url, "killed", "grid", 1.0, 600.0))
    victim.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(stored_keys(url)) < 3:
        time.sleep(0.1)
    time.sleep(0.5)  # now inside the next candidate's evaluation, holding its lease
    victim.kill()
    victim.join()
    finished = stored_keys(url)
    assert len(finished) >= 3
    # a new run on this host: the dead worker's lease (600 s) is taken over at once
    resumed = fake_worker.run(url, "resumed", "grid", 0.01)
    assert not set(resumed) & set(finished)  # no finished candidate repeated
    keys = stored_keys(url)
    assert sorted(keys) == sorted(c.key() for c in fake_worker.space())  # each exactly once
    assert TrialStore(url, "ctx").claims_held() == 0


def test_a_candidate_that_kills_its_process_twice_is_failed_and_the_search_goes_on(url: str) -> None:
    crasher = fake_worker.space()[3].key()
    spawn = multiprocessing.get_context("spawn")

    def run_in_a_child(run_id: str) -> int | None:
        child = spawn.Process(target=fake_worker.run, args=(url, run_id, "grid", 0.0, 600.0, crasher))
        child.start()
        child.join(timeout=300)
        return child.exitcode

    assert run_in_a_child("first") == 137  # died measuring it: its 600 s lease stays behind
    assert crasher not in stored_keys(url)
    assert run_in_a_child("resumed") == 137  # one death may be a kill: it is measured again
    assert run_in_a_child("resumed again") == 0  # the second death is the candidate's
    store = TrialStore(url, "ctx")
    failed = store.get(fake_worker.space()[3])
    assert failed is not None and failed.status == FAILED
    assert failed.reason is not None and failed.reason.startswith("2 processes died measuring it")
    assert sorted(set(stored_keys(url))) == sorted(c.key() for c in fake_worker.space())
    assert store.claims_held() == 0 and store.claim_owner(crasher) is None
    # asked to, a later run measures it again (no deaths since its failure)
    assert fake_worker.run(url, "retry", "grid", 0.0, retry_failed=True) == [crasher]
    retried = TrialStore(url, "ctx").get(fake_worker.space()[3])
    assert retried is not None and retried.status == MEASURED


def test_sqlite_file_is_a_valid_database_after_the_workers(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.db")
    fake_worker.run(url, "one", "random", 0.0)
    with sqlite3.connect(tmp_path / "trials.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
