"""TrialStore: an append-only JSONL file with one record per finished candidate.

A record is keyed by (context, candidate): the context hashes the model's weights, the target's
fingerprint and the measurement protocol, so a re-run of the same search resumes and a changed
protocol measures afresh. Appends hold an exclusive lock so that several processes can share a
file; a torn last line (a killed writer) is skipped on load.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from optimizer.results import CandidateResult
from optimizer.space import Candidate

log = logging.getLogger(__name__)
STORE_SCHEMA = 1


def context_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrialStore:
    def __init__(self, path: Path, context: str) -> None:
        self.path = path
        self.context = context
        self._records: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        self._records.clear()
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d is not valid JSON (an interrupted write?); skipped", self.path, number)
                    continue
                if record.get("context") == self.context and record.get("schema") == STORE_SCHEMA:
                    self._records[record["candidate_key"]] = record  # the last record wins

    def get(self, candidate: Candidate) -> CandidateResult | None:
        record = self._records.get(candidate.key())
        if record is None:
            return None
        try:
            return CandidateResult.from_dict(record["result"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("stored record for %s is unreadable (%s); measuring again", candidate.label(), exc)
            return None

    def quality_for(self, numerics_key: str) -> dict[str, Any] | None:
        """A stored quality result for the same numerics (batch size and threads do not matter)."""
        for record in self._records.values():
            if record.get("numerics_key") == numerics_key and record["result"].get("quality"):
                return dict(record["result"]["quality"])
        return None

    def append(self, result: CandidateResult) -> None:
        record: dict[str, Any] = {
            "schema": STORE_SCHEMA,
            "context": self.context,
            "candidate_key": result.candidate.key(),
            "numerics_key": result.candidate.numerics_key(),
            "result": result.to_dict(),
        }
        line = json.dumps(record, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                size = handle.seek(0, 2)
                if size:
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        line = "\n" + line  # a killed writer left a torn line: keep it on its own
                handle.write(line.encode())
                handle.flush()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self._records[result.candidate.key()] = record
