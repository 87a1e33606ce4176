"""The TrialStore's tables and its database engine: an SQLite file or a PostgreSQL URL.

- `wattsmith_trials`: insert-only; the latest row of a candidate wins. A killed writer leaves a
  committed row or nothing (a transaction), never a torn record.
- `wattsmith_quality`: quality per numerics key, written as soon as it is measured, so that batch
  and thread variants on other workers reuse it before the first variant finishes. Its context is
  the quality probe's own (no workload, SLO or energy source): other runs' measurements reuse it.
- `wattsmith_claims`: a lease per key (a candidate, or the quality of a numerics key). A worker
  measures only what it holds; leases are renewed while it lives and lapse when it dies.
- `wattsmith_deaths`: a row each time a worker takes a lease over from one that died holding it
  (a native crash, the out-of-memory killer, a kill): a candidate that kills every process
  measuring it is failed after a second death instead of ending every resumed run.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    Column,
    Connection,
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
    false,
    make_url,
)

from optimizer.errors import UserError

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

deaths_table = Table(
    "wattsmith_deaths",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("context", String(64), nullable=False, index=True),
    Column("key", String(128), nullable=False),
    Column("owner", String(200), nullable=False),  # the worker that died holding the lease
    Column("found_at", Float, nullable=False),  # seconds since the epoch, the finder's clock
)


def context_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_url(location: str | Path) -> str:
    """A SQLAlchemy URL for `store_path`: a file path means SQLite; postgresql:// uses psycopg 3."""
    text = str(location).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        path = Path(text).expanduser()
        if path.suffix.lower() == ".jsonl":  # OLD.JSONL is the old store too
            raise UserError(
                "store_path",
                f"{path} is a JSONL store, which this version replaced by SQLite",
                "use a .db path (e.g. outputs/trials.db) or a postgresql:// URL",
            )
        if path.is_dir():
            raise UserError(
                "store_path", f"{path} is a directory", f"name a file in it, e.g. {path / 'trials.db'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                "store_path",
                f"cannot create the directory {path.parent} ({error.strerror or error})",
                "point store_path at a file in a writable directory",
            ) from None
        # quoted: a '?' or '%' in a folder's name would otherwise be read as URL syntax (the
        # database lands in another file)
        return URL.create("sqlite", database=str(path.resolve())).render_as_string()
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        _refuse_in_memory(text)
        return text
    if scheme == "postgresql+psycopg":
        return text
    raise UserError(
        "store_path",
        f"unsupported database '{scheme}'",
        "use a file path (SQLite) or postgresql://user@host/db",
    )


def _refuse_in_memory(url: str) -> None:
    """An in-memory SQLite database is private to one connection: workers would each see their
    own, and nothing would be left for a resumed run."""
    parsed = make_url(url)
    database = parsed.database or ""
    if (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or parsed.query.get("mode") == "memory"
    ):
        raise UserError(
            "store_path",
            f"{url} is an SQLite database in memory, which workers do not share and a resumed run cannot find",
            "name a file: store_path=outputs/trials.db (or sqlite:////abs/path/trials.db)",
        )


_ENGINES: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine per database and process (each pools its connections)."""
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            # timeout: wait for another process's write lock instead of failing at once
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        try:
            metadata_create(engine)
            _check_usable(engine)
        except exc.DBAPIError as error:  # not a database, no permission, a server not answering
            engine.dispose()
            raise _refusal(engine, error) or UserError(
                "store_path",
                f"cannot open {_shown(engine)} ({error.orig})",
                "give a new .db file, an SQLite file wattsmith wrote, or a reachable postgresql:// URL",
            ) from None
        except UserError:
            engine.dispose()
            raise
        _ENGINES[url] = engine
    return engine


def open_database(location: str | Path) -> Engine:
    """The store's database, opened (and its tables made) now: a bad `store_path` fails before
    minutes of model loading, not after."""
    return engine_for(store_url(location))


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _check_usable(engine: Engine) -> None:
    """Tables that open may still sit in a file damaged past its first pages (copied mid-write, a
    failing disk) or one this process may not write: found now, not as a traceback at the first
    read or write after minutes of model loading."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            found = [str(row[0]) for row in connection.exec_driver_sql("PRAGMA quick_check")]
        if found != ["ok"]:
            raise _damaged(engine, found[0] if found else "no answer")
    with engine.begin() as connection:  # a write that changes nothing: SQLite checks the file then
        connection.execute(delete(claims_table).where(false()))


def _damaged(engine: Engine, finding: str) -> UserError:
    path = shlex.quote(engine.url.database or "")
    return UserError(
        "store_path",
        f"{_shown(engine)} is damaged (SQLite's check: {finding})",
        f"move it aside and run again (its candidates are measured afresh), or salvage its rows: "
        f"sqlite3 {path} .recover | sqlite3 recovered.db, then store_path=recovered.db",
    )


def _refusal(engine: Engine, error: exc.DBAPIError, opened: bool = False) -> UserError | None:
    """The UserError for a store that is damaged or refuses writes (what the user fixes on the
    disk or the server, not in wattsmith); None for any other error. `opened`: the file passed the
    checks at open, so one that no longer reads as a database was damaged since (at open it may
    be any file the user named)."""
    text = str(error.orig)
    # PostgreSQL's SQLSTATEs: disk_full; read_only_sql_transaction (a standby), insufficient_privilege
    state = str(getattr(error.orig, "sqlstate", "") or "")
    sqlite = engine.dialect.name == "sqlite"
    if sqlite and ("malformed" in text or (opened and "file is not a database" in text)):
        return _damaged(engine, text)
    if "database or disk is full" in text or state == "53100":
        fix = "free space on its disk, or point store_path at a copy of it on another disk"
    elif "readonly database" in text or state in ("25006", "42501"):
        fix = (
            "make it writable (SQLite also writes its -wal and -shm files beside it: its folder too), "
            "or point store_path at a copy of it in a writable place"
            if sqlite
            else "connect to the primary server as a role that may create, insert, update and delete "
            "in the wattsmith_* tables"
        )
    else:
        return None
    return UserError("store_path", f"cannot write to {_shown(engine)} ({text})", fix)


@contextmanager
def _refusing(engine: Engine) -> Iterator[None]:
    """A store that filled its disk, turned read-only or was damaged since it was opened raises a
    UserError; any other error (a lost race, a lock, a bug) reaches the caller as it was."""
    try:
        yield
    except exc.DBAPIError as error:
        refusal = _refusal(engine, error, opened=True)
        if refusal is None:
            raise
        raise refusal from None


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction, its refusals UserErrors (`_refusing`)."""
    with _refusing(engine), engine.begin() as connection:
        yield connection


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads: a file damaged since it was opened fails the first read after,
    often long before the next write."""
    with _refusing(engine), engine.connect() as connection:
        yield connection


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
