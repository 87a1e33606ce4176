"""Stored rows are JSON that SQLite's json functions read, non-finite numbers included; a store
damaged after it was opened is a UserError on reads as on writes; and a lease that claim() would
take over is not counted as held by held_by_others()."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc

from optimizer.errors import UserError
from optimizer.processes import host_name
from optimizer.results import REJECTED
from optimizer.store import TrialStore, worker_identity

# --- non-finite numbers ----------------------------------------------------------------------


def test_non_finite_numbers_are_stored_as_json_and_read_back_exactly(
    tmp_path: Path, make_result, make_quality, make_candidate
) -> None:
    path = tmp_path / "t.db"
    # an overflow in fp16: the probe's perplexity is infinite and its KL not a number
    quality = replace(make_quality(), perplexity=math.inf, ppl_increase=math.inf, mean_kl=math.nan)
    result = make_result(status=REJECTED, quality=quality, reason="nan", build_seconds=-math.inf)
    numerics = result.candidate.numerics_key()
    store = TrialStore(path, "ctx")
    store.append(result)
    store.put_quality(numerics, quality.to_dict())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT json_valid(result) FROM wattsmith_trials").fetchall() == [(1,)]
        assert connection.execute("SELECT json_valid(quality) FROM wattsmith_quality").fetchall() == [(1,)]
        status = "SELECT json_extract(result, '$.status') FROM wattsmith_trials"
        assert connection.execute(status).fetchall() == [(REJECTED,)]
        top1 = "SELECT json_extract(quality, '$.top1_agreement') FROM wattsmith_quality"
        assert connection.execute(top1).fetchall() == [(quality.top1_agreement,)]

    again = TrialStore(path, "ctx")  # from the rows, not this worker's memory
    read = again.get(result.candidate)
    assert read is not None and read.quality is not None
    assert read.quality.perplexity == math.inf and read.quality.ppl_increase == math.inf
    assert math.isnan(read.quality.mean_kl) and read.build_seconds == -math.inf
    assert read.reason == "nan"  # a string stays a string
    assert read.performance == result.performance  # None stays None
    shared = again.quality_for(numerics)
    assert shared is not None and shared["perplexity"] == math.inf and math.isnan(shared["mean_kl"])
    assert again.run_history() == [] and again.run_seconds() == 0.0  # another run's
    assert store.get(make_candidate(batch_size=99)) is None


def test_rows_written_with_bare_nan_tokens_still_read(tmp_path: Path, make_result, make_quality) -> None:
    """Rows that earlier versions stored with Python's NaN/Infinity tokens keep their results."""
    path = tmp_path / "t.db"
    quality = replace(make_quality(), perplexity=math.inf, mean_kl=math.nan)
    result = make_result(status=REJECTED, quality=quality, reason="not finite")
    TrialStore(path, "ctx").append(make_result(status=REJECTED, quality=make_quality(), reason="x"))
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE wattsmith_trials SET result = ?", (json.dumps(result.to_dict()),))
    read = TrialStore(path, "ctx").get(result.candidate)
    assert read is not None and read.quality is not None
    assert read.quality.perplexity == math.inf and math.isnan(read.quality.mean_kl)


def test_a_performance_with_non_finite_figures_round_trips(
    tmp_path: Path, make_result, make_performance
) -> None:
    performance = make_performance()
    performance = replace(performance, idle_watts=math.nan, goodput_fraction=math.inf)
    result = make_result(performance=performance)
    path = tmp_path / "t.db"
    TrialStore(path, "ctx").append(result)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT json_valid(result) FROM wattsmith_trials").fetchall() == [(1,)]
    read = TrialStore(path, "ctx").get(result.candidate)
    assert read is not None and read.performance is not None
    assert math.isnan(read.performance.idle_watts) and read.performance.goodput_fraction == math.inf
    assert read.performance.windows == performance.windows


# --- damage after open -----------------------------------------------------------------------


def _filled(path: Path, make_result, make_candidate) -> TrialStore:
    store = TrialStore(path, "ctx")
    for batch_size in range(1, 120):
        store.append(make_result(candidate=make_candidate(batch_size=batch_size)))
    store._engine.dispose()  # no connection keeps pages of the file as it was
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the file itself
    return store


READS: dict[str, Callable[[TrialStore], Any]] = {
    "reload": lambda store: store.reload(),
    "refresh": lambda store: store.refresh(),
    "quality_for": lambda store: store.quality_for("numerics"),
    "claim_owner": lambda store: store.claim_owner("key"),
    "held_by_others": lambda store: store.held_by_others(),
    "deaths_since": lambda store: store.deaths_since("key", 0.0),
    "claims_held": lambda store: store.claims_held(),
}


@pytest.mark.parametrize("damage", ["rows", "header"])
def test_a_store_damaged_after_it_was_opened_fails_reads_with_a_user_error(
    tmp_path: Path, make_result, make_candidate, damage: str
) -> None:
    path = tmp_path / "trials.db"
    store = _filled(path, make_result, make_candidate)
    data = path.read_bytes()
    kept = 8192 if damage == "rows" else 0  # the schema's pages intact, or nothing
    path.write_bytes(data[:kept] + b"\xff" * (len(data) - kept))
    for name, read in READS.items():
        with pytest.raises(UserError) as info:
            read(store)
        assert info.value.field == "store_path", name
        assert "trials.db is damaged" in info.value.problem, name
        assert "move it aside" in info.value.fix and ".recover" in info.value.fix, name
    with pytest.raises(UserError):  # writes too
        store.claim("key", 60)


def test_a_file_that_is_no_database_at_open_is_still_named_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"\xff" * 8192)
    with pytest.raises(UserError) as info:
        TrialStore(path, "ctx")
    assert "cannot open" in info.value.problem and "is damaged" not in info.value.problem


def test_other_errors_of_a_read_are_not_called_damage(tmp_path: Path) -> None:
    path = tmp_path / "trials.db"
    store = TrialStore(path, "ctx")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE wattsmith_claims")
    with pytest.raises(exc.OperationalError, match="no such table"):
        store.claim_owner("key")


# --- leases ----------------------------------------------------------------------------------


@pytest.fixture
def live_pid() -> Any:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_lease_is_held_exactly_when_claim_would_not_take_it(tmp_path: Path, live_pid: int) -> None:
    """held_by_others() is what claim() refuses: a lapsed lease of a live worker on this host is
    taken over (without counting a death), so it is no evaluation under way either."""
    path = tmp_path / "t.db"
    here = host_name()
    holders = {
        "live-here": (f"{here}:{live_pid}:live", 60.0),
        "live-here-lapsed": (f"{here}:{live_pid}:stalled", 0.05),
        "dead-here": (f"{here}:{_exited_pid()}:gone", 3600.0),
        "remote": ("elsewhere:1:x", 60.0),
        "remote-lapsed": ("elsewhere:2:x", 0.05),
    }
    for key, (owner, lease) in holders.items():
        assert TrialStore(path, "ctx", worker=owner).claim(key, lease)
    time.sleep(0.2)
    store = TrialStore(path, "ctx", worker=worker_identity())
    held = set(store.held_by_others())
    taken = {key for key in holders if store.claim(key, 60)}
    assert held == {"live-here", "remote"}
    assert taken == set(holders) - held
    # only the holders that never renewed again died as far as anyone can tell
    deaths = {key for key in holders if store.deaths_since(key, 0.0)}
    assert deaths == {"dead-here", "remote-lapsed"}
