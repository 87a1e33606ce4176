"""TrialStore: every evaluated candidate, quality per numerics, and the workers' leases, in SQL.

One database is the meeting point of every worker of a search: an SQLite file on one machine (the
default), PostgreSQL when workers run on several nodes. Rows carry a context that hashes the
model's weights, the target's fingerprint and the measurement protocol, so a re-run resumes and a
changed protocol measures afresh.

- `wattsmith_trials`: insert-only; the latest row of a candidate wins. A killed writer leaves a
  committed row or nothing (a transaction), never a torn record.
- `wattsmith_quality`: quality per numerics key, written as soon as it is measured, so that batch
  and thread variants on other workers reuse it before the first variant finishes.
- `wattsmith_claims`: a lease per key (a candidate, or the quality of a numerics key). A worker
  measures only what it holds; leases are renewed while it lives and lapse when it dies.

Why not Optuna's storage: Optuna permits duplicate trials and has no atomic claim, results must be
shared across samplers (a grid run's results serve a later Optuna run) and re-judged under a new
quality bound, and Optuna's RUNNING trials outlive a `kill -9` when asked for with ask/tell. Each
Optuna sampler rebuilds its study from this store instead (search/optuna_sampler.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    exc,
    func,
    insert,
    select,
    update,
)

from optimizer.errors import UserError
from optimizer.results import REJECTED, CandidateResult
from optimizer.space import Candidate

log = logging.getLogger(__name__)
STORE_SCHEMA = 2
QUALITY_CLAIM_PREFIX = "quality/"

metadata = MetaData()
trials_table = Table(
    "wattsmith_trials",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("schema", Integer, nullable=False),
    Column("context", String(64), nullable=False, index=True),
    Column("candidate_key", String(64), nullable=False),
    Column("numerics_key", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("worker", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("result", Text, nullable=False),  # CandidateResult.to_dict() as JSON
)
quality_table = Table(
    "wattsmith_quality",
    metadata,
    Column("context", String(64), primary_key=True),
    Column("numerics_key", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("quality", Text, nullable=False),
)
claims_table = Table(
    "wattsmith_claims",
    metadata,
    Column("context", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),  # seconds since the epoch, the claimant's clock
)


def context_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_url(location: str | Path) -> str:
    """A SQLAlchemy URL for `store_path`: a file path means SQLite; postgresql:// uses psycopg 3."""
    text = str(location).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        path = Path(text).expanduser()
        if path.suffix == ".jsonl":
            raise UserError(
                "store_path",
                f"{path} is a JSONL store, which this version replaced by SQLite",
                "use a .db path (e.g. outputs/trials.db) or a postgresql:// URL",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "postgresql+psycopg"):
        return text
    raise UserError(
        "store_path",
        f"unsupported database '{scheme}'",
        "use a file path (SQLite) or postgresql://user@host/db",
    )


def is_shared_server(location: str | Path) -> bool:
    """Whether workers on other machines can reach this store (a database server, not a file)."""
    return store_url(location).startswith("postgresql")


def worker_identity() -> str:
    """host:pid:token. The host and pid let a worker on the same host see that a claimant died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only its lease's expiry tells
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_ENGINES: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    """One engine per database and process (each pools its connections)."""
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            # timeout: wait for another process's write lock instead of failing at once
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        metadata_create(engine)
        _ENGINES[url] = engine
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.close()


def metadata_create(engine: Engine) -> None:
    """Create the tables. Workers starting at once race between checking and creating: the loser
    gets "already exists" (SQLite: OperationalError; PostgreSQL: a catalog IntegrityError or
    ProgrammingError) and checks again."""
    for attempt in range(3):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (exc.IntegrityError, exc.ProgrammingError, exc.OperationalError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


class TrialStore:
    """The results of one context, as seen by one worker of one run."""

    def __init__(
        self, location: str | Path, context: str, run_id: str | None = None, worker: str | None = None
    ) -> None:
        self.url = store_url(location)
        self.context = context
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.worker = worker or worker_identity()
        self._engine = _engine(self.url)
        self._records: dict[str, dict[str, Any]] = {}
        self._last_seq = 0
        self.reload()

    def describe(self) -> str:
        """The store for logs, without a password."""
        return self._engine.url.render_as_string(hide_password=True)

    # --- results -------------------------------------------------------------------------------

    def reload(self) -> None:
        self._records.clear()
        self._last_seq = 0
        self.refresh()

    def refresh(self) -> list[str]:
        """Read rows written since the last read (by any worker); returns their candidate keys."""
        query = (
            select(trials_table)
            .where(trials_table.c.context == self.context, trials_table.c.seq > self._last_seq)
            .order_by(trials_table.c.seq)
        )
        changed = []
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        for row in rows:
            self._last_seq = max(self._last_seq, row["seq"])
            if row["schema"] != STORE_SCHEMA:
                continue
            try:
                result = json.loads(row["result"])
            except json.JSONDecodeError:
                log.warning("store row %s is not valid JSON; skipped", row["seq"])
                continue
            self._records[row["candidate_key"]] = dict(row) | {"result": result}  # the latest wins
            changed.append(row["candidate_key"])
        return changed

    def get(self, candidate: Candidate) -> CandidateResult | None:
        record = self._records.get(candidate.key())
        if record is None:
            return None
        try:
            return CandidateResult.from_dict(record["result"])
        except (KeyError, TypeError, ValueError) as error:
            log.warning("stored record for %s is unreadable (%s); measuring again", candidate.label(), error)
            return None

    def measured_in_run(self, candidate: Candidate) -> bool:
        """Whether the stored result was evaluated by a worker of this run (not an earlier run)."""
        record = self._records.get(candidate.key())
        return record is not None and record["run_id"] == self.run_id

    def run_seconds(self) -> float:
        """Evaluation seconds that this run's workers spent, all of them together."""
        return sum(
            float(r["result"].get("seconds", 0.0))
            for r in self._records.values()
            if r["run_id"] == self.run_id
        )

    def run_history(self) -> list[CandidateResult]:
        """This run's results in the order they were committed (all workers)."""
        mine = sorted(
            (r for r in self._records.values() if r["run_id"] == self.run_id), key=lambda r: r["seq"]
        )
        return [CandidateResult.from_dict(r["result"]) for r in mine]

    def run_count(self) -> int:
        """Evaluations of this run that built something: a rejection by known quality is free."""
        return sum(
            1
            for r in self._records.values()
            if r["run_id"] == self.run_id
            and (r["result"].get("status") != REJECTED or r["result"].get("build_seconds", 0.0) > 0)
        )

    def append(self, result: CandidateResult) -> None:
        """Record a finished candidate and give up its lease, in one transaction."""
        key = result.candidate.key()
        row = {
            "schema": STORE_SCHEMA,
            "context": self.context,
            "candidate_key": key,
            "numerics_key": result.candidate.numerics_key(),
            "status": result.status,
            "run_id": self.run_id,
            "worker": self.worker,
            "created_at": time.time(),
            "result": json.dumps(result.to_dict(), sort_keys=True),
        }
        with self._engine.begin() as connection:
            seq = connection.execute(insert(trials_table).values(**row)).inserted_primary_key
            connection.execute(self._mine(delete(claims_table), key))
        self._records[key] = row | {"seq": seq[0] if seq else None, "result": result.to_dict()}

    # --- quality per numerics ------------------------------------------------------------------

    def quality_for(self, numerics_key: str) -> dict[str, Any] | None:
        """A stored quality result for the same numerics (batch size and threads do not matter)."""
        query = select(quality_table.c.quality).where(
            quality_table.c.context == self.context, quality_table.c.numerics_key == numerics_key
        )
        with self._engine.connect() as connection:
            stored = connection.execute(query).scalar()
        if stored is not None:
            return dict(json.loads(stored))
        for record in self._records.values():
            if record.get("numerics_key") == numerics_key and record["result"].get("quality"):
                return dict(record["result"]["quality"])
        return None

    def put_quality(self, numerics_key: str, quality: dict[str, Any]) -> None:
        """Share a numerics key's quality at once, and give up the lease on measuring it."""
        row = {
            "context": self.context,
            "numerics_key": numerics_key,
            "created_at": time.time(),
            "quality": json.dumps(quality, sort_keys=True),
        }
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(quality_table).values(**row))
        except exc.IntegrityError:
            pass  # another worker stored it first: the same numerics give the same numbers
        self.release(QUALITY_CLAIM_PREFIX + numerics_key)

    # --- leases ----------------------------------------------------------------------------------

    def claim(self, key: str, lease_seconds: float) -> bool:
        """Take the lease on `key` when nobody holds it, its holder's lease lapsed, or its holder
        died on this host. Atomic: of two workers claiming at once, exactly one succeeds."""
        for _ in range(3):  # a lease released between two statements: try again
            now = time.time()
            expires = now + lease_seconds
            try:
                with self._engine.begin() as connection:
                    connection.execute(
                        insert(claims_table).values(
                            context=self.context, key=key, owner=self.worker, expires_at=expires
                        )
                    )
                return True
            except exc.IntegrityError:
                pass
            lapsed = (claims_table.c.expires_at < now) | (claims_table.c.owner == self.worker)
            if self._take(key, lapsed, expires):
                return True
            owner = self.claim_owner(key)
            if owner is None:
                continue
            # compare-and-swap on the owner: only if the lease is still the dead worker's
            if _owner_is_dead(owner) and self._take(key, claims_table.c.owner == owner, expires):
                log.info("took over %s from %s, which is no longer running", key, owner)
                return True
            return False
        return False

    def _take(self, key: str, condition: Any, expires: float) -> bool:
        with self._engine.begin() as connection:
            taken = connection.execute(
                update(claims_table)
                .where(claims_table.c.context == self.context, claims_table.c.key == key, condition)
                .values(owner=self.worker, expires_at=expires)
            ).rowcount
        return bool(taken)

    def claim_owner(self, key: str) -> str | None:
        query = select(claims_table.c.owner).where(
            claims_table.c.context == self.context, claims_table.c.key == key
        )
        with self._engine.connect() as connection:
            owner = connection.execute(query).scalar()
        return str(owner) if owner is not None else None

    def renew(self, lease_seconds: float) -> int:
        """Extend every lease this worker holds; returns how many it still holds."""
        with self._engine.begin() as connection:
            return int(
                connection.execute(
                    update(claims_table)
                    .where(claims_table.c.context == self.context, claims_table.c.owner == self.worker)
                    .values(expires_at=time.time() + lease_seconds)
                ).rowcount
            )

    def release(self, key: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(self._mine(delete(claims_table), key))

    def claims_held(self) -> int:
        query = select(func.count()).where(
            claims_table.c.context == self.context, claims_table.c.owner == self.worker
        )
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def _mine(self, statement: Any, key: str) -> Any:
        return statement.where(
            claims_table.c.context == self.context,
            claims_table.c.key == key,
            claims_table.c.owner == self.worker,
        )


@contextmanager
def leases_kept(store: TrialStore, lease_seconds: float) -> Iterator[None]:
    """Renew the worker's leases every quarter lease while the block runs; a killed worker stops
    renewing, so its leases lapse and others take its candidates over."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds / 4):
            try:
                store.renew(lease_seconds)
            except exc.SQLAlchemyError as error:  # the database blinked: try again next period
                log.warning("could not renew leases in %s: %s", store.describe(), error)

    keeper = threading.Thread(target=renew, name="wattsmith-leases", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
