"""A search worker with an instant, deterministic evaluator, run in child processes by the
shared-store tests (spawned children import it by this module's name)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from optimizer.config import QualityConfig, SearchConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.results import MEASURED, CandidateResult
from optimizer.search.runner import WorkerReport, search_worker
from optimizer.search.workers import WorkerSpec
from optimizer.space import Candidate, TorchSettings
from optimizer.store import TrialStore, leases_kept
from unit.factories import performance_result, quality_result


def space() -> list[Candidate]:
    """12 candidates: {fp32, bf16} x batch {1, 2, 4, 8, 16, 32}; tokens/J grows with the batch."""
    return [
        Candidate(TorchSettings(precision=p), batch_size=b, threads=1)
        for p in ("fp32", "bf16")
        for b in (1, 2, 4, 8, 16, 32)
    ]


@dataclass
class SlowEvaluator:
    """Takes `seconds` per candidate and remembers what it evaluated; evaluating `crash_on` ends
    the process at once, as a native crash or the out-of-memory killer would."""

    store: TrialStore
    seconds: float
    crash_on: str | None = None
    asked: list[str] = field(default_factory=list)
    workload_cfg: WorkloadConfig = field(default_factory=WorkloadConfig)

    def evaluate(
        self, candidate: Candidate, role: str = "candidate", stop_below: float | None = None
    ) -> CandidateResult:
        self.asked.append(candidate.key())
        if candidate.key() == self.crash_on:
            os._exit(137)
        time.sleep(self.seconds)
        bonus = 1.5 if candidate.settings.precision == "bf16" else 1.0
        return CandidateResult(
            candidate=candidate,
            status=MEASURED,
            quality=quality_result(mean_kl=0.001),
            performance=performance_result(goodput_tokens_per_joule=candidate.batch_size * bonus),
            role=role,
            seconds=self.seconds,
        )


def run(
    url: str,
    run_id: str,
    sampler: str,
    seconds: float,
    lease_seconds: float = 30.0,
    crash_on: str | None = None,
    retry_failed: bool = False,
) -> list[str]:
    """One worker over `space()`; returns the keys of the candidates it evaluated itself."""
    store = TrialStore(url, "ctx", run_id=run_id)
    evaluator = SlowEvaluator(store, seconds, crash_on)
    candidates = space()
    search_worker(
        candidates,
        candidates[0],
        evaluator,  # type: ignore[arg-type]  # duck-typed: evaluate(), store, workload_cfg
        SearchConfig(sampler=sampler, lease_seconds=lease_seconds, retry_failed=retry_failed),
        QualityConfig(),
        progress=lambda _: None,
    )
    return evaluator.asked


def report_or_die(spec: WorkerSpec) -> WorkerReport:
    """A worker for the local launcher: worker 0 dies as a native crash would, worker 1 reports."""
    if spec.index == 0:
        os._exit(137)
    return WorkerReport(evaluated=3)


def hold_a_lease(spec: WorkerSpec) -> WorkerReport:
    """A worker for the local launcher that holds the lease on "cand" until it is stopped."""
    store = TrialStore(spec.cfg.store_path, "ctx")
    with leases_kept(store, 600):
        assert store.claim("cand", 600)
        time.sleep(600)
    return WorkerReport()


def hold_a_lease_deaf(spec: WorkerSpec) -> WorkerReport:
    """`hold_a_lease` inside a long native call (an engine build), which SIGTERM cannot interrupt:
    blocking the signal stands in for it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    return hold_a_lease(spec)


def refuse_the_context(spec: WorkerSpec) -> WorkerReport:
    """A worker that measures in another context than its coordinator's, as run_worker says it."""
    raise UserError("target", f"worker {spec.index} measures in another context", "use the same versions")
