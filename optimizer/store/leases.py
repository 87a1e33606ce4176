"""Leases: a worker measures a key (a candidate, or the quality of a numerics key) only while it
holds the key's lease in the store. Leases are renewed while the worker lives and lapse when it
dies: after their expiry, or at once when the dead worker ran on the same host."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, delete, exc, func, insert, select, update

from optimizer.store.tables import claims_table

log = logging.getLogger(__name__)


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


class Leases:
    """The leases of one worker in one context of a store."""

    def __init__(self, engine: Engine, context: str, worker: str) -> None:
        self.context = context
        self.worker = worker
        self._engine = engine

    def describe(self) -> str:
        """The store for logs, without a password."""
        return self._engine.url.render_as_string(hide_password=True)

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
def leases_kept(store: Leases, lease_seconds: float) -> Iterator[None]:
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
