"""TrialStore on SQLite: results keyed by context, quality per numerics, leases between workers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.results import FAILED, REJECTED
from optimizer.store import STORE_SCHEMA, TrialStore, context_key, store_url


def rows(path: Path) -> list[sqlite3.Row]:
    """The trials table read with the standard library, not through the store."""
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM wattsmith_trials ORDER BY seq").fetchall()


def test_context_key_is_stable_and_order_free() -> None:
    a = context_key({"model": "abc", "target": {"cores": 2, "kind": "cpu"}})
    b = context_key({"target": {"kind": "cpu", "cores": 2}, "model": "abc"})
    assert a == b and len(a) == 16
    assert a != context_key({"model": "abd", "target": {"cores": 2, "kind": "cpu"}})


def test_store_locations(tmp_path: Path) -> None:
    assert store_url(tmp_path / "a" / "t.db") == f"sqlite:///{tmp_path / 'a' / 't.db'}"
    assert (tmp_path / "a").is_dir()  # the folder is created for the file
    assert store_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert store_url("postgres://h/db") == "postgresql+psycopg://h/db"
    with pytest.raises(UserError, match="store_path") as old:
        store_url(tmp_path / "trials.jsonl")
    assert "SQLite" in old.value.problem
    with pytest.raises(UserError, match="mysql"):
        store_url("mysql://h/db")


def test_append_then_get_in_a_new_store(tmp_path: Path, make_result, make_quality, make_performance) -> None:
    path = tmp_path / "sub" / "trials.db"
    result = make_result(quality=make_quality(mean_kl=0.01), performance=make_performance())
    store = TrialStore(path, "ctx")
    assert store.get(result.candidate) is None
    store.append(result)
    assert store.get(result.candidate) == result
    resumed = TrialStore(path, "ctx")
    assert resumed.get(result.candidate) == result
    (row,) = rows(path)
    assert row["schema"] == STORE_SCHEMA
    assert row["candidate_key"] == result.candidate.key()
    assert row["numerics_key"] == result.candidate.numerics_key()
    assert row["run_id"] == store.run_id and row["worker"] == store.worker
    assert store.measured_in_run(result.candidate) and not resumed.measured_in_run(result.candidate)


def test_other_candidates_are_not_found(tmp_path: Path, make_result, make_candidate) -> None:
    store = TrialStore(tmp_path / "t.db", "ctx")
    store.append(make_result(candidate=make_candidate(batch_size=1)))
    assert TrialStore(tmp_path / "t.db", "ctx").get(make_candidate(batch_size=2)) is None


def test_a_different_context_is_isolated(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.db"
    result = make_result()
    TrialStore(path, "ctx-a").append(result)
    assert TrialStore(path, "ctx-b").get(result.candidate) is None
    assert TrialStore(path, "ctx-a").get(result.candidate) == result


def test_the_last_record_wins_and_nothing_is_overwritten(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.db"
    store = TrialStore(path, "ctx")
    store.append(make_result(status=FAILED, reason="first try"))
    store.append(make_result(status=REJECTED, reason="second try"))
    assert TrialStore(path, "ctx").get(make_result().candidate).reason == "second try"
    assert [r["status"] for r in rows(path)] == [FAILED, REJECTED]  # insert-only


def test_refresh_sees_another_workers_rows(tmp_path: Path, make_result, make_candidate) -> None:
    path = tmp_path / "t.db"
    mine, theirs = TrialStore(path, "ctx", run_id="run"), TrialStore(path, "ctx", run_id="run")
    other = make_result(candidate=make_candidate(batch_size=8), seconds=3.0)
    theirs.append(other)
    assert mine.get(other.candidate) is None
    assert mine.refresh() == [other.candidate.key()]
    assert mine.get(other.candidate) == other
    assert mine.measured_in_run(other.candidate)  # same run, another worker
    assert mine.run_seconds() == 3.0 and mine.run_count() == 1
    assert mine.refresh() == []  # only new rows


def test_garbage_and_other_schema_rows_are_skipped(tmp_path: Path, make_result, make_candidate) -> None:
    path = tmp_path / "t.db"
    good = make_result(candidate=make_candidate(batch_size=1))
    TrialStore(path, "ctx").append(good)
    # later rows for the same candidate would win if read: both must be skipped for it to survive
    with sqlite3.connect(path) as connection:
        for schema, payload in ((STORE_SCHEMA, "{not json"), (STORE_SCHEMA + 1, "{}")):
            connection.execute(
                "INSERT INTO wattsmith_trials (schema, context, candidate_key, numerics_key, status, run_id,"
                " worker, created_at, result) VALUES (?, 'ctx', ?, 'n', 'measured', 'r', 'w', 0, ?)",
                (schema, good.candidate.key(), payload),
            )
    store = TrialStore(path, "ctx", run_id="r")  # the junk rows' run: any row read would count
    assert store.get(good.candidate) == good
    assert store.run_count() == 0


def test_an_unreadable_stored_result_is_measured_again(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.db"
    result = make_result()
    TrialStore(path, "ctx").append(result)
    broken = result.to_dict()
    del broken["status"]
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE wattsmith_trials SET result = ?", (json.dumps(broken),))
    assert TrialStore(path, "ctx").get(result.candidate) is None


def test_quality_for_a_numerics_key(tmp_path: Path, make_result, make_candidate, make_quality) -> None:
    path = tmp_path / "t.db"
    store = TrialStore(path, "ctx")
    b1 = make_candidate(batch_size=1, precision="bf16")
    quality = make_quality(mean_kl=0.02)
    store.append(make_result(candidate=b1, status=REJECTED, quality=quality))
    store.append(make_result(candidate=make_candidate(batch_size=1), quality=None, status=FAILED))
    resumed = TrialStore(path, "ctx")
    b64 = make_candidate(batch_size=64, threads=1, precision="bf16")
    assert resumed.quality_for(b64.numerics_key()) == quality.to_dict()
    # a failed record carries no quality; unknown numerics have none either
    assert resumed.quality_for(make_candidate().numerics_key()) is None
    assert resumed.quality_for(make_candidate(quantization="int8-weight").numerics_key()) is None
    assert TrialStore(path, "other").quality_for(b64.numerics_key()) is None


def test_quality_is_shared_before_any_result(tmp_path: Path, make_candidate, make_quality) -> None:
    path = tmp_path / "t.db"
    one, two = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    numerics = make_candidate(precision="bf16").numerics_key()
    assert one.claim("quality/" + numerics, 60)
    assert not two.claim("quality/" + numerics, 60)
    one.put_quality(numerics, make_quality(mean_kl=0.03).to_dict())
    assert two.quality_for(numerics) == make_quality(mean_kl=0.03).to_dict()
    assert one.claims_held() == 0  # storing the quality gave the lease up
    two.put_quality(numerics, make_quality(mean_kl=0.9).to_dict())  # a late duplicate: the first stays
    assert one.quality_for(numerics) == make_quality(mean_kl=0.03).to_dict()


def test_quality_rows_live_in_their_own_context(tmp_path: Path, make_candidate, make_quality) -> None:
    """Runs that measure differently (another workload, SLO, energy source) share one quality
    context: a quality stored by one serves the others."""
    path = tmp_path / "t.db"
    numerics, quality = make_candidate(precision="bf16").numerics_key(), make_quality(mean_kl=0.03).to_dict()
    TrialStore(path, "chat", quality_context="q").put_quality(numerics, quality)
    assert TrialStore(path, "batch", quality_context="q").quality_for(numerics) == quality
    assert TrialStore(path, "batch", quality_context="other").quality_for(numerics) is None
    assert TrialStore(path, "q").quality_for(numerics) is not None  # by default, the results' context


def test_a_lease_is_exclusive_until_released(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    one, two = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    assert one.claim("cand", 60)
    assert one.claim("cand", 60)  # re-entrant for its holder
    assert not two.claim("cand", 60)
    assert two.claim_owner("cand") == one.worker
    assert TrialStore(path, "other-ctx").claim("cand", 60)  # leases are per context
    two.release("cand")  # not its lease: nothing happens
    assert not two.claim("cand", 60)
    one.release("cand")
    assert two.claim("cand", 60)


def test_append_gives_the_lease_up(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.db"
    one, two = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    result = make_result()
    assert one.claim(result.candidate.key(), 60)
    one.append(result)
    assert one.claims_held() == 0
    assert two.claim(result.candidate.key(), 60)


def test_a_lapsed_lease_is_taken_over_and_renewal_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    one, two = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    assert one.claim("a", 0.2) and one.claim("b", 0.2)
    assert one.renew(60) == 2  # "a" and "b" now last a minute
    time.sleep(0.3)
    assert not two.claim("a", 60)
    assert one.claim("c", 0.1)
    time.sleep(0.2)
    assert two.claim("c", 60)  # lapsed: taken over
    assert one.renew(60) == 2  # "c" is no longer its own


def test_a_dead_workers_lease_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    code = (
        "import sys\nfrom optimizer.store import TrialStore\n"
        "assert TrialStore(sys.argv[1], 'ctx').claim('cand', 3600)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    store = TrialStore(path, "ctx")
    owner = store.claim_owner("cand")
    assert owner is not None and owner != store.worker
    assert store.claim("cand", 60)  # its holder exited on this host: no need to wait an hour
    assert store.claim_owner("cand") == store.worker


def test_taking_a_lease_from_a_dead_holder_counts_a_death_and_from_a_live_one_does_not(
    tmp_path: Path, make_result
) -> None:
    path = tmp_path / "t.db"
    one, two = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    result = make_result()
    candidate, key = result.candidate, result.candidate.key()
    assert one.claim(key, 0.1) and one.claim(key, 60)  # its own lease again: nobody died
    one.renew(0.1)
    time.sleep(0.2)
    assert two.claim(key, 60)  # lapsed, but its holder runs here: it stalled, it did not die
    assert two.deaths_since(key, 0.0) == 0
    code = (
        "import sys\nfrom optimizer.store import TrialStore\n"
        "store = TrialStore(sys.argv[1], 'ctx')\n"
        "assert store.claim(sys.argv[2], 3600) and store.claim('quality/' + sys.argv[3], 3600)\n"
    )
    two.release(key)
    died = [sys.executable, "-c", code, str(path), key, candidate.numerics_key()]
    for _ in range(2):
        subprocess.run(died, check=True, timeout=120)
        assert two.claim(key, 60) and two.claim("quality/" + candidate.numerics_key(), 60)
        two.release(key)
        two.release("quality/" + candidate.numerics_key())
    assert two.deaths_since(key, 0.0) == 2 and two.deaths_measuring(candidate) == 2
    assert TrialStore(path, "other").deaths_since(key, 0.0) == 0  # per context
    # a quality lease's deaths are not charged to the candidates of those numerics: its holder was
    # also building one batch size, whose crash says nothing about the others
    sibling = replace(candidate, batch_size=candidate.batch_size * 2)
    assert two.deaths_since("quality/" + candidate.numerics_key(), 0.0) == 2
    assert sibling.numerics_key() == candidate.numerics_key() and two.deaths_measuring(sibling) == 0
    # a result written since resets the count
    two.append(result)
    assert two.deaths_measuring(candidate) == 0


def test_a_worker_in_another_pid_namespace_is_on_another_host() -> None:
    """Containers sharing a hostname (host networking) see other processes under the same pids:
    a pid missing here says nothing about a worker there, only its lease's expiry does."""
    import os
    import socket

    from optimizer.store.leases import _alive_here, worker_identity

    here = worker_identity().rsplit(":", 2)[0]
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    assert _alive_here(f"{here}:{os.getpid()}:t") is True
    assert _alive_here(f"{here}:{dead_pid}:t") is False
    if os.path.exists("/proc/self/ns/pid"):
        assert _alive_here(f"{socket.gethostname()}/1:{dead_pid}:t") is None  # another namespace


def test_the_leases_of_a_killed_worker_process_are_released_in_every_context(tmp_path: Path) -> None:
    """What a coordinator does for a worker it killed: that process's leases go, in its results'
    and its quality context, and no other process's (pid 12 is not pid 123)."""
    from optimizer.store import open_database, release_process_leases
    from optimizer.store.leases import worker_identity

    host = worker_identity().rsplit(":", 2)[0]
    stores = {
        owner: TrialStore(tmp_path / "t.db", context, worker=owner)
        for owner, context in [(f"{host}:12:a", "ctx"), (f"{host}:12:b", "q"), (f"{host}:123:c", "ctx")]
    }
    for index, store in enumerate(stores.values()):
        assert store.claim(f"key{index}", 600)
    assert release_process_leases(open_database(tmp_path / "t.db"), 12) == 2
    assert [store.claims_held() for store in stores.values()] == [0, 0, 1]
    assert stores[f"{host}:123:c"].deaths_since("key0", 0.0) == 0


def test_a_dead_worker_not_yet_reaped_is_dead(tmp_path: Path) -> None:
    """A local worker that died while the coordinator waits on another is a zombie: it still
    answers kill(pid, 0), and its lease is taken over at once all the same."""
    path = tmp_path / "t.db"
    code = "import sys\nfrom optimizer.store import TrialStore\nassert TrialStore(sys.argv[1], 'ctx').claim('c', 3600)\n"
    child = subprocess.Popen([sys.executable, "-c", code, str(path)])
    store = TrialStore(path, "ctx")
    deadline = time.time() + 120
    while store.claim_owner("c") is None and time.time() < deadline:
        time.sleep(0.1)
    state = Path(f"/proc/{child.pid}/stat")
    while state.read_text().rpartition(")")[2].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.1)  # exited, and not waited for (poll() would reap it)
    assert state.read_text().rpartition(")")[2].split()[0] == "Z"
    assert store.claim("c", 60) and store.deaths_since("c", 0.0) == 1
    child.wait()


def test_a_killed_writer_leaves_whole_rows(tmp_path: Path, make_result, make_candidate) -> None:
    path = tmp_path / "t.db"
    TrialStore(path, "ctx")  # create the tables
    code = (
        "import sys\nfrom optimizer.store import TrialStore\nfrom tests_support import many_results\n"
        "store = TrialStore(sys.argv[1], 'ctx')\n"
        "print('ready', flush=True)\n"
        "for result in many_results():\n    store.append(result)\n"
    )
    support = tmp_path / "tests_support.py"
    support.write_text(
        "from optimizer.results import CandidateResult\nfrom optimizer.space import Candidate, TorchSettings\n"
        "def many_results():\n"
        "    for i in range(1, 100000):\n"
        "        yield CandidateResult(Candidate(TorchSettings(), i, 1), 'failed', reason='x' * 5000)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while time.time() < deadline and len(rows(path)) < 20:
        time.sleep(0.05)
    proc.kill()  # SIGKILL, mid-append
    proc.wait()
    written = rows(path)
    assert len(written) >= 20
    store = TrialStore(path, "ctx")
    for row in written:
        result = json.loads(row["result"])  # every committed row is whole
        assert result["reason"] == "x" * 5000
        assert store.get(make_candidate(batch_size=result["candidate"]["batch_size"], threads=1)) is not None
    store.append(make_result(candidate=make_candidate(batch_size=999999)))  # and the store still writes
    assert len(rows(path)) == len(written) + 1


def test_a_lost_table_creation_race_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine, exc

    from optimizer.store import tables as module

    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    real = module.metadata.create_all
    calls: list[int] = []

    def racing(bind: object, checkfirst: bool = True) -> None:
        calls.append(1)
        if len(calls) == 1:  # another worker created the table between our check and our CREATE
            real(bind, checkfirst=checkfirst)
            raise exc.OperationalError("CREATE TABLE", {}, Exception("table wattsmith_trials already exists"))
        real(bind, checkfirst=checkfirst)

    monkeypatch.setattr(module.metadata, "create_all", racing)
    module.metadata_create(engine)
    assert len(calls) == 2


def test_a_row_committed_after_a_later_numbered_one_is_still_read(
    tmp_path: Path, make_result, make_candidate
) -> None:
    """PostgreSQL numbers rows at insert: seq 3 can commit after seq 5 was read. The store
    re-reads a window behind its last number (SQLite, which needs none, stands in here)."""
    path = tmp_path / "t.db"
    reader = TrialStore(path, "ctx")
    assert reader.lookback_rows == 0  # SQLite commits in number order
    reader.lookback_rows = 64  # as on PostgreSQL
    early, late = (
        make_result(candidate=make_candidate(batch_size=1)),
        make_result(candidate=make_candidate(batch_size=2)),
    )

    def commit(result, seq: int) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(
                "INSERT INTO wattsmith_trials (seq, schema, context, candidate_key, numerics_key, status, run_id,"
                " worker, created_at, result) VALUES (?, ?, 'ctx', ?, 'n', 'measured', 'r', 'w', 0, ?)",
                (seq, STORE_SCHEMA, result.candidate.key(), json.dumps(result.to_dict(), sort_keys=True)),
            )

    commit(late, 5)
    assert reader.refresh() == [late.candidate.key()]
    commit(early, 3)  # numbered before, committed after
    assert reader.refresh() == [early.candidate.key()]
    assert reader.get(early.candidate) == early
    assert reader.refresh() == []  # read once
    stale = replace(late, reason="an older measurement")
    commit(stale, 4)  # an older row of a candidate already read at 5 must not replace it
    assert reader.refresh() == []
    assert reader.get(late.candidate) == late


def exited_worker(path: Path, context: str = "ctx") -> TrialStore:
    """A store as a worker of this host that has since exited would have used it."""
    from optimizer.store.leases import worker_identity

    exited = subprocess.Popen(["true"])
    exited.wait()
    return TrialStore(path, context, worker=f"{worker_identity().rsplit(':', 2)[0]}:{exited.pid}:gone")


def test_deaths_in_a_quality_probe_count_for_every_candidate_of_its_numerics(
    tmp_path: Path, make_result
) -> None:
    path = tmp_path / "t.db"
    store = TrialStore(path, "ctx")
    result = make_result()
    candidate = result.candidate
    sibling = replace(candidate, batch_size=candidate.batch_size * 2)
    probe = "quality/probe/" + candidate.numerics_key()
    for _ in range(2):
        assert exited_worker(path).claim(probe, 3600) and store.claim(probe, 60)
        store.release(probe)
    assert store.deaths_probing(candidate) == 2 and store.deaths_probing(sibling) == 2
    assert store.deaths_measuring(sibling) == 0  # the candidates' own leases saw no death
    store.append(result)  # a result written since (retry_failed's) starts its count afresh
    assert store.deaths_probing(candidate) == 0 and store.deaths_probing(sibling) == 2


def test_candidates_other_live_workers_hold(tmp_path: Path) -> None:
    """What other workers are measuring now: their leases on candidates, not on quality probes,
    not a dead worker's and not a lapsed one elsewhere."""
    path = tmp_path / "t.db"
    store, other = TrialStore(path, "ctx"), TrialStore(path, "ctx")
    assert store.claim("mine", 60) and other.claim("theirs", 60) and other.claim("quality/n", 60)
    assert exited_worker(path).claim("dead", 3600)
    assert TrialStore(path, "ctx", worker="elsewhere:1:x").claim("lapsed", 0.01)
    assert TrialStore(path, "ctx", worker="elsewhere:2:x").claim("remote", 60)
    assert exited_worker(path, "other context").claim("there", 3600)
    time.sleep(0.05)
    assert sorted(store.candidates_held_elsewhere()) == ["remote", "theirs"]
