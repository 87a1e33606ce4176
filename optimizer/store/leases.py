"""Leases: a worker measures a key (a candidate, or the quality of a numerics key) only while it
holds the key's lease in the store. Leases are renewed while the worker lives and lapse when it
dies: after their expiry, or at once when the dead worker ran on the same host. A lease taken from
a worker that died holding it is recorded as a death of its key: the search fails a candidate that
keeps killing the processes measuring it (search/runner.py)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, delete, exc, func, insert, select, update

from optimizer.processes import host_name as _host
from optimizer.processes import process_alive
from optimizer.store.tables import claims_table, deaths_table, reading, writing

log = logging.getLogger(__name__)
HUNG = " (hung)"  # after the owner of a death that its own watchdog recorded (`hung`)
LOST_LEASE = (
    "lost the lease on %s: another worker took it over after this one renewed nothing for "
    "search.lease_seconds=%g (a stall); this worker stores no result of it"
)


def worker_identity() -> str:
    """host:pid:token. The host and pid let a worker on the same host see that a claimant died."""
    return f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _alive_here(owner: str) -> bool | None:
    """Whether a worker on this host still runs; None: it ran on another host."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _host() or not pid_text.isdigit():
        return None  # another machine: only its lease's expiry tells
    return process_alive(int(pid_text))


def release_process_leases(engine: Engine, pid: int) -> int:
    """Give up every lease that process `pid` of this host holds, in any context: its coordinator
    killed it when it would not stop, which is no death of its candidate. Returns how many."""
    owned = claims_table.c.owner.startswith(f"{_host()}:{pid}:", autoescape=True)  # worker_identity
    with engine.begin() as connection:
        return int(connection.execute(delete(claims_table).where(owned)).rowcount)


class Leases:
    """The leases of one worker in one context of a store."""

    def __init__(self, engine: Engine, context: str, worker: str) -> None:
        self.context = context
        self.worker = worker
        self._engine = engine
        # the keys this worker claimed and has not given up (key: label), to tell one another
        # worker took over (this one stalled past its lease) from one never held; the lease
        # keeper's thread reads them
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()

    def describe(self) -> str:
        """The store for logs, without a password."""
        return self._engine.url.render_as_string(hide_password=True)

    def claim(self, key: str, lease_seconds: float, label: str | None = None) -> bool:
        """Take the lease on `key` when nobody holds it, its holder's lease lapsed, or its holder
        died on this host. Atomic: of two workers claiming at once, exactly one succeeds. Taking it
        from a holder that is gone records a death of `key` (see `deaths_since`). `label`: what
        the key stands for (a candidate's label), as logs name it; the key is a bare hash."""
        for _ in range(3):  # a lease released between two statements: try again
            now = time.time()
            expires = now + lease_seconds
            try:
                with writing(self._engine) as connection:
                    connection.execute(
                        insert(claims_table).values(
                            context=self.context, key=key, owner=self.worker, expires_at=expires
                        )
                    )
                return self._hold(key, label)
            except exc.IntegrityError:
                pass
            if self._take(key, claims_table.c.owner == self.worker, expires):
                return self._hold(key, label)
            owner = self.claim_owner(key)
            if owner is None:
                continue
            alive = _alive_here(owner)  # None: it ran on another host
            holder = claims_table.c.owner == owner  # compare-and-swap: only if still that holder's
            lapsed = claims_table.c.expires_at < now
            if not self._take(key, holder if alive is False else holder & lapsed, expires):
                return False
            if alive is not True:  # a live worker here that stalled past its lease did not die
                self._record_death(key, owner)
                log.warning("took over %s from %s, which died holding it", label or key, owner)
            return self._hold(key, label)
        return False

    def _hold(self, key: str, label: str | None) -> bool:
        with self._held_lock:
            self._held[key] = label or key
        return True

    def _let_go(self, key: str | None = None) -> None:
        """Forget a lease (every lease: None) before giving it up: gone from the store, it is no
        lost one."""
        with self._held_lock:
            if key is None:
                self._held.clear()
            else:
                self._held.pop(key, None)

    def lost(self, key: str) -> str | None:
        """The label of `key` when this worker claimed it and another worker has since taken it
        over (this one stalled past its lease: renewal is the only sign of life), or the lease is
        gone (the taker finished); None while it holds it, or never did."""
        label = self._held.get(key)
        if label is None or self.claim_owner(key) == self.worker:
            return None
        return label

    def lost_leases(self) -> dict[str, str]:
        """Every lease this worker claimed and lost (key: label), as `lost` tells each."""
        with self._held_lock:
            held = dict(self._held)  # before the read: a lease claimed after it is not lost
        query = select(claims_table.c.key).where(
            claims_table.c.context == self.context, claims_table.c.owner == self.worker
        )
        with reading(self._engine) as connection:
            owned = set(connection.execute(query).scalars())
        with self._held_lock:  # given up meanwhile: not lost
            return {key: label for key, label in held.items() if key not in owned and key in self._held}

    def leases_claimed(self) -> int:
        return len(self._held)

    def _take(self, key: str, condition: Any, expires: float) -> bool:
        with writing(self._engine) as connection:
            taken = connection.execute(
                update(claims_table)
                .where(claims_table.c.context == self.context, claims_table.c.key == key, condition)
                .values(owner=self.worker, expires_at=expires)
            ).rowcount
        return bool(taken)

    def _record_death(self, key: str, owner: str) -> None:
        row = {"context": self.context, "key": key, "owner": owner, "found_at": time.time()}
        with writing(self._engine) as connection:
            connection.execute(insert(deaths_table).values(**row))

    def hung(self, key: str) -> None:
        """Record this worker's own death in `key` before its watchdog ends it (a hang), and give
        the lease up in the same transaction: counted once, as a hang, never again by a claim."""
        self._let_go(key)
        row = {"context": self.context, "key": key, "owner": self.worker + HUNG, "found_at": time.time()}
        with writing(self._engine) as connection:
            connection.execute(insert(deaths_table).values(**row))
            connection.execute(self._mine(delete(claims_table), key))

    def deaths_since(self, key: str, since: float, hung: bool = False) -> int:
        """How many workers died holding `key`'s lease after `since` (seconds since the epoch);
        `hung`: only those that hung (`hung`)."""
        query = select(func.count()).where(
            deaths_table.c.context == self.context,
            deaths_table.c.key == key,
            deaths_table.c.found_at > since,
        )
        if hung:
            query = query.where(deaths_table.c.owner.endswith(HUNG))
        with reading(self._engine) as connection:
            return int(connection.execute(query).scalar() or 0)

    def held_by_others(self) -> list[str]:
        """Keys other workers hold in this context and may still be using: exactly the leases
        `claim` would not take. A lease lapses for a live worker on this host too: renewal (every
        quarter lease) is the only sign that a worker still measures; a stopped one, or a process
        whose renewals ended but that lives on (its release_all failed), would otherwise keep its
        keys from every other worker for as long as it runs."""
        query = select(claims_table.c.key, claims_table.c.owner, claims_table.c.expires_at).where(
            claims_table.c.context == self.context, claims_table.c.owner != self.worker
        )
        now = time.time()
        with reading(self._engine) as connection:
            rows = connection.execute(query).all()
        return [key for key, owner, expires in rows if expires >= now and _alive_here(owner) is not False]

    def claim_owner(self, key: str) -> str | None:
        query = select(claims_table.c.owner).where(
            claims_table.c.context == self.context, claims_table.c.key == key
        )
        with reading(self._engine) as connection:
            owner = connection.execute(query).scalar()
        return str(owner) if owner is not None else None

    def renew(self, lease_seconds: float) -> int:
        """Extend every lease this worker holds; returns how many it still holds."""
        with self._engine.begin() as connection:  # not writing(): leases_kept logs its errors
            return int(
                connection.execute(
                    update(claims_table)
                    .where(claims_table.c.context == self.context, claims_table.c.owner == self.worker)
                    .values(expires_at=time.time() + lease_seconds)
                ).rowcount
            )

    def release(self, key: str) -> None:
        self._let_go(key)
        with writing(self._engine) as connection:
            connection.execute(self._mine(delete(claims_table), key))

    def release_all(self) -> None:
        """Give up every lease this worker holds: it stops without dying (an interrupt)."""
        self._let_go()
        with self._engine.begin() as connection:  # not writing(): leases_kept logs its errors
            connection.execute(
                delete(claims_table).where(
                    claims_table.c.context == self.context, claims_table.c.owner == self.worker
                )
            )

    def claims_held(self) -> int:
        query = select(func.count()).where(
            claims_table.c.context == self.context, claims_table.c.owner == self.worker
        )
        with reading(self._engine) as connection:
            return int(connection.execute(query).scalar() or 0)

    def _mine(self, statement: Any, key: str) -> Any:
        return statement.where(
            claims_table.c.context == self.context,
            claims_table.c.key == key,
            claims_table.c.owner == self.worker,
        )


@contextmanager
def leases_kept(store: Leases, lease_seconds: float) -> Iterator[None]:
    """Renew the worker's leases every quarter lease while the block runs; a killed worker stops
    renewing, so its leases lapse and others take its candidates over. A block left any other way
    (an interrupt included) gives its leases up: the next run must not count it as a death."""
    stop = threading.Event()

    said: set[str] = set()

    def renew() -> None:
        while not stop.wait(lease_seconds / 4):
            try:
                # fewer renewed than claimed: taken over after a stall, or given up meanwhile
                if store.renew(lease_seconds) < store.leases_claimed():
                    for key, label in store.lost_leases().items():
                        if key not in said:
                            said.add(key)
                            log.warning(LOST_LEASE, label, lease_seconds)
            except exc.SQLAlchemyError as error:  # the database blinked: try again next period
                log.warning("could not renew leases in %s: %s", store.describe(), error)

    keeper = threading.Thread(target=renew, name="wattsmith-leases", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        try:
            store.release_all()
        except exc.SQLAlchemyError as error:  # they lapse instead
            log.warning("could not give up leases in %s: %s", store.describe(), error)
