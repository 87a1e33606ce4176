"""The TrialStore: every evaluated candidate, quality per numerics, and the workers' leases, in SQL.

One database is the meeting point of every worker of a search: an SQLite file on one machine (the
default), PostgreSQL when workers run on several nodes. Rows carry a context that hashes the
model's weights, the target's fingerprint and the measurement protocol, so a re-run resumes and a
changed protocol measures afresh.

`tables`: the tables and the engine; `trials`: results and quality (TrialStore); `leases`: who
measures what, renewed while a worker lives.
"""

from __future__ import annotations

from optimizer.store.leases import Leases, leases_kept, release_process_leases, worker_identity
from optimizer.store.tables import (
    QUALITY_CLAIM_PREFIX,
    STORE_SCHEMA,
    claims_table,
    context_key,
    engine_for,
    metadata,
    metadata_create,
    open_database,
    quality_table,
    store_url,
    trials_table,
)
from optimizer.store.trials import TrialStore

__all__ = [
    "QUALITY_CLAIM_PREFIX",
    "STORE_SCHEMA",
    "Leases",
    "TrialStore",
    "claims_table",
    "context_key",
    "engine_for",
    "leases_kept",
    "metadata",
    "metadata_create",
    "open_database",
    "quality_table",
    "release_process_leases",
    "store_url",
    "trials_table",
    "worker_identity",
]
