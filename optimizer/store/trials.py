"""TrialStore: every evaluated candidate and quality per numerics, as one worker of one run sees
them; the worker's leases come with it (store/leases.py).

Why not Optuna's storage: Optuna permits duplicate trials and has no atomic claim, results must be
shared across samplers (a grid run's results serve a later Optuna run) and re-judged under a new
quality bound, and Optuna's RUNNING trials outlive a `kill -9` when asked for with ask/tell. Each
Optuna sampler rebuilds its study from this store instead (search/optuna_sampler.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exc, insert, select

from optimizer.results import FAILED, REJECTED, CandidateResult
from optimizer.space import Candidate
from optimizer.store.leases import Leases, worker_identity
from optimizer.store.tables import (
    QUALITY_CLAIM_PREFIX,
    STORE_SCHEMA,
    claims_table,
    engine_for,
    quality_table,
    reading,
    store_url,
    trials_table,
    writing,
)

log = logging.getLogger(__name__)

GAP_LOOKBACK_ROWS = 64  # rows numbered but not yet committed when read: a few per worker
# The lease on running a numerics key's quality probe, held around the probe alone (the quality
# lease is also held through a build): deaths under it are the numerics', not one batch size's.
PROBE_CLAIM_PREFIX = QUALITY_CLAIM_PREFIX + "probe/"
# JSON has no NaN or infinity: Python's bare NaN/Infinity tokens make SQLite's json functions
# refuse the row. Such a float (an fp16 overflow's perplexity and KL) is stored as this tagged
# object and read back as it was. Not null: null already means "none" in these rows
# (capacity_rate, joules_per_request), and an infinite perplexity must not come back as NaN.
NON_FINITE_TAG = "$float"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def dump_json(value: Any) -> str:
    """`value` as valid JSON (allow_nan=False: a non-finite float missed is an error, not a row
    that other readers refuse)."""
    return json.dumps(_tagged(value), sort_keys=True, allow_nan=False)


def load_json(text: str) -> Any:
    """What `dump_json` wrote; rows of earlier versions with bare NaN/Infinity tokens read too."""
    return json.loads(text, object_hook=_untagged)


def _tagged(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {NON_FINITE_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {key: _tagged(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tagged(item) for item in value]
    return value


def _untagged(obj: dict[str, Any]) -> Any:
    tag = obj.get(NON_FINITE_TAG)
    return _NON_FINITE[tag] if len(obj) == 1 and isinstance(tag, str) and tag in _NON_FINITE else obj


def uses_a_slot(result: dict[str, Any]) -> bool:
    """Whether a stored result (CandidateResult.to_dict) was an evaluation that built or measured
    something. Free: a rejection by quality already known (no build), and a failure recorded for
    processes that died measuring the candidate or probing its numerics (search/evaluate.py
    died_measuring, died_probing: nothing ran, so no seconds)."""
    status = result.get("status")
    if status == REJECTED:
        return float(result.get("build_seconds") or 0.0) > 0
    if status == FAILED:
        return float(result.get("seconds") or 0.0) > 0 or float(result.get("build_seconds") or 0.0) > 0
    return True


class TrialStore(Leases):
    """The results of one context, as seen by one worker of one run. Quality rows have their own
    context (`quality_context`, by default the results'): a probe depends on less than a
    measurement, so runs that measure differently share it (search/plan.py quality_context)."""

    def __init__(
        self,
        location: str | Path,
        context: str,
        run_id: str | None = None,
        worker: str | None = None,
        quality_context: str | None = None,
    ) -> None:
        self.url = store_url(location)
        super().__init__(engine_for(self.url), context, worker or worker_identity())
        self.quality_context = quality_context or context
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._records: dict[str, dict[str, Any]] = {}
        self._last_seq = 0
        # PostgreSQL numbers a row when it is inserted, not when it commits: a row numbered below
        # one already read may commit later. Re-read that many numbers back (SQLite serializes
        # its writers, so numbers arrive in commit order there).
        self.lookback_rows = 0 if self.url.startswith("sqlite") else GAP_LOOKBACK_ROWS
        self._recent: set[int] = set()  # numbers read within the lookback
        self.reload()

    # --- results -------------------------------------------------------------------------------

    def reload(self) -> None:
        self._records.clear()
        self._last_seq = 0
        self._recent.clear()
        self.refresh()

    def refresh(self) -> list[str]:
        """Read rows committed since the last read (by any worker); returns their candidate keys."""
        low = max(self._last_seq - self.lookback_rows, 0)
        self._recent = {seq for seq in self._recent if seq > low}
        unread = trials_table.c.seq > low
        if self._recent:
            unread = unread & trials_table.c.seq.not_in(sorted(self._recent))
        query = (
            select(trials_table)
            .where(trials_table.c.context == self.context, unread)
            .order_by(trials_table.c.seq)
        )
        changed = []
        with reading(self._engine) as connection:
            rows = connection.execute(query).mappings().all()
        for row in rows:
            seq = row["seq"]
            self._last_seq = max(self._last_seq, seq)
            if self.lookback_rows:
                self._recent.add(seq)
            if row["schema"] != STORE_SCHEMA:
                continue
            try:
                result = load_json(row["result"])
            except json.JSONDecodeError:
                log.warning("store row %s is not valid JSON; skipped", seq)
                continue
            known = self._records.get(row["candidate_key"])
            if known is not None and (known.get("seq") or 0) > seq:  # committed late, written earlier
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

    def commit_order(self) -> list[str]:
        """Candidate keys in the order their latest stored results were committed (all runs)."""
        return sorted(self._records, key=lambda key: self._records[key].get("seq") or 0)

    def run_count(self) -> int:
        """Evaluations of this run, as search.max_candidates counts them (`uses_a_slot`)."""
        return sum(
            1 for r in self._records.values() if r["run_id"] == self.run_id and uses_a_slot(r["result"])
        )

    def append(self, result: CandidateResult) -> None:
        """Record a finished candidate and give up its lease, in one transaction. Not when another
        worker took the lease over (this one stalled past it): that worker's result stands, and
        the latest row would win over it."""
        key = result.candidate.key()
        if (label := self.lost(key)) is not None:
            self._let_go(key)
            log.warning(
                "%s: another worker took it over after this one renewed nothing for "
                "search.lease_seconds (a stall); this worker's result is not stored",
                label,
            )
            return
        self._let_go(key)
        row = {
            "schema": STORE_SCHEMA,
            "context": self.context,
            "candidate_key": key,
            "numerics_key": result.candidate.numerics_key(),
            "status": result.status,
            "run_id": self.run_id,
            "worker": self.worker,
            "created_at": time.time(),
            "result": dump_json(result.to_dict()),
        }
        with writing(self._engine) as connection:
            seq = connection.execute(insert(trials_table).values(**row)).inserted_primary_key
            connection.execute(self._mine(delete(claims_table), key))
        self._records[key] = row | {"seq": seq[0] if seq else None, "result": result.to_dict()}

    def deaths_measuring(self, candidate: Candidate) -> int:
        """Workers that died holding the candidate's lease since its latest stored result. Only its
        own: a quality lease is held through a build that depends on the batch size, so its deaths
        would charge every batch size of the numerics with one size's crash."""
        return self.deaths_since(candidate.key(), self._result_time(candidate))

    def deaths_probing(self, candidate: Candidate, hung: bool = False) -> int:
        """Workers that died in the quality probe of the candidate's numerics since the candidate's
        latest stored result (so that search.retry_failed probes again). Every batch size and thread
        count of the numerics runs the same probe: its deaths are charged to all of them. `hung`:
        only those ended by their watchdog."""
        key = PROBE_CLAIM_PREFIX + candidate.numerics_key()
        return self.deaths_since(key, self._result_time(candidate), hung)

    def _result_time(self, candidate: Candidate) -> float:
        record = self._records.get(candidate.key())
        return float(record["created_at"]) if record is not None else 0.0

    def candidates_held_elsewhere(self) -> list[str]:
        """Candidates other live workers of this context hold: evaluations under way (a quality
        lease is none)."""
        return [key for key in self.held_by_others() if not key.startswith(QUALITY_CLAIM_PREFIX)]

    # --- quality per numerics ------------------------------------------------------------------

    def quality_for(self, numerics_key: str) -> dict[str, Any] | None:
        """A stored quality result for the same numerics (batch size and threads do not matter)."""
        query = select(quality_table.c.quality).where(
            quality_table.c.context == self.quality_context, quality_table.c.numerics_key == numerics_key
        )
        with reading(self._engine) as connection:
            stored = connection.execute(query).scalar()
        if stored is not None:
            return dict(load_json(stored))
        for record in self._records.values():
            if record.get("numerics_key") == numerics_key and record["result"].get("quality"):
                return dict(record["result"]["quality"])
        return None

    def put_quality(self, numerics_key: str, quality: dict[str, Any]) -> None:
        """Share a numerics key's quality at once, and give up the lease on measuring it."""
        row = {
            "context": self.quality_context,
            "numerics_key": numerics_key,
            "created_at": time.time(),
            "quality": dump_json(quality),
        }
        try:
            with writing(self._engine) as connection:
                connection.execute(insert(quality_table).values(**row))
        except exc.IntegrityError:
            pass  # another worker stored it first: the same numerics give the same numbers
        self.release(QUALITY_CLAIM_PREFIX + numerics_key)
