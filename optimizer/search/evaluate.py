"""Evaluate one candidate: build, quality probe first, then the workload in energy windows."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizer.backends.artifacts import artifacts_used, served_artifact
from optimizer.backends.base import Engine
from optimizer.backends.parity import check_greedy_parity
from optimizer.backends.registry import build_engine
from optimizer.config import QUALITY_REFERENCES, QualityConfig, SearchConfig, WorkloadConfig
from optimizer.interrupts import interruptible
from optimizer.measure.energy import EnergyMeter, meter_for_engine
from optimizer.measure.load import measure_load
from optimizer.measure.quality import (
    QualityReference,
    QualityResult,
    ReferenceNotFinite,
    evaluate_quality,
    require_finite_reference,
)
from optimizer.measure.setup import MeasurementSetup
from optimizer.measure.stream import RequestStream
from optimizer.measure.workload import PerformanceResult, Workload, measure_performance
from optimizer.model import ModelSpec
from optimizer.results import FAILED, MEASURED, REJECTED, CandidateResult
from optimizer.search.device_lock import DeviceLock
from optimizer.search.watchdog import Watch, Watchdog, now_iso
from optimizer.space import Candidate, reference_candidate
from optimizer.store import QUALITY_CLAIM_PREFIX, TrialStore
from optimizer.store.trials import PROBE_CLAIM_PREFIX
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)
QUALITY_POLL_SECONDS = 1.0
# A candidate (or a numerics' quality probe) that killed this many processes, each found dead
# holding its lease by the next worker or resumed run, is failed: one death may be a kill, two are it.
DEATHS_BEFORE_FAILING = 2
PROBING = "in the quality probe"  # the watch's phase while probing
DEATH_CAUSES = "without a result (a native crash, the out-of-memory killer or a kill: see their logs)"


class LeaseLost(RuntimeError):
    """Another worker took over the candidate this worker evaluates."""


def died_measuring(candidate: Candidate, deaths: int, role: str = "candidate") -> CandidateResult:
    """The failure recorded for a candidate whose measuring killed its process `deaths` times."""
    reason = (
        f"{deaths} processes died measuring it, {DEATH_CAUSES}; search.retry_failed=true measures it again"
    )
    return CandidateResult(candidate, FAILED, reason=reason, role=role, finished_at=now_iso())


def died_probing(
    candidate: Candidate, deaths: int, role: str = "candidate", hung: int = 0
) -> CandidateResult:
    """The failure recorded for a candidate whose numerics' quality probe killed `deaths` processes,
    `hung` of them ended by their watchdog."""
    causes = f"{hung} of them hung past search.candidate_timeout_minutes (ended by the watchdog)"
    causes = (
        DEATH_CAUSES if not hung else causes if hung == deaths else f"{causes}, the others {DEATH_CAUSES}"
    )
    reason = (
        f"{deaths} processes died in the quality probe of its numerics, {causes}; every batch "
        "size and thread count of them fails alike; search.retry_failed=true probes it again"
    )
    return CandidateResult(candidate, FAILED, reason=reason, role=role, finished_at=now_iso())


@dataclass
class Evaluator:
    """Everything needed to turn a Candidate into a CandidateResult.

    Quality per numerics is computed once and shared by batch-size and thread variants, across
    workers too: it goes to the store as soon as it is measured, and a worker that finds another
    measuring the same numerics waits for its result instead of measuring it again. With a
    `device` lock, builds and quality probes hold the device shared and energy windows exclusive.
    """

    model: ModelSpec
    target: TargetSpec
    meter: EnergyMeter
    workload: Workload
    quality_tokens: torch.Tensor
    workload_cfg: WorkloadConfig
    quality_cfg: QualityConfig
    search_cfg: SearchConfig
    store: TrialStore | None
    workdir: Path
    device: DeviceLock | None = None
    streams: dict[float, RequestStream] | None = None  # serving workloads: the stream per offered load
    # ends the process on a candidate still running past its timeout plus a slack (a native hang)
    watchdog: Watchdog = field(default_factory=Watchdog)
    _reference: QualityReference | None = field(default=None, init=False)
    _quality: dict[str, QualityResult] = field(default_factory=dict, init=False)

    @classmethod
    def for_setup(
        cls,
        setup: MeasurementSetup,
        search_cfg: SearchConfig | None = None,
        store: TrialStore | None = None,
        device: DeviceLock | None = None,
    ) -> Evaluator:
        """An Evaluator over a measurement setup; without a store, quality is cached in memory only;
        with a device lock, energy windows never overlap other workers' work on the device."""
        return cls(
            model=setup.model,
            target=setup.target,
            meter=setup.meter,
            workload=setup.workload,
            quality_tokens=setup.quality_tokens,
            workload_cfg=setup.workload_cfg,
            quality_cfg=setup.quality_cfg,
            search_cfg=search_cfg or SearchConfig(),
            store=store,
            workdir=setup.cache_dir,
            device=device,
            streams=setup.streams,
        )

    def reference(self, on_hang: Callable[[], object] | None = None) -> QualityReference:
        """The reference's logits on the held-out text (`quality.reference`), computed on first use
        under a watch of its own (role "reference"): a hang there is the reference's, never a
        candidate's. `on_hang`: what that hang settles first (the leases of the candidate waiting)."""
        if self._reference is None:
            ref_candidate = reference_candidate(self.quality_cfg.reference, self.target)
            timeout = self.search_cfg.candidate_timeout_minutes
            with self.watchdog.watching(ref_candidate, "reference", None, timeout) as watch:
                watch.phase, watch.on_hang = "building the quality reference", on_hang
                with watch.waiting(self._device(exclusive=False)):
                    engine = build_engine(self.model, ref_candidate, self.target, self.workdir)
                    try:
                        reference = QualityReference(self.quality_tokens, engine, self.quality_cfg.batch_size)
                    finally:
                        engine.close()
            require_finite_reference(reference, self.quality_cfg.reference)
            self._reference = reference
            name = QUALITY_REFERENCES[self.quality_cfg.reference]
            log.info("quality reference: %s perplexity %.3f", name, reference.perplexity)
        return self._reference

    def _cached_quality(self, candidate: Candidate) -> QualityResult | None:
        key = candidate.numerics_key()
        if key not in self._quality and self.store and (stored := self.store.quality_for(key)) is not None:
            self._quality[key] = QualityResult(**stored)
        return self._quality.get(key)

    def _shared_quality(self, candidate: Candidate, deadline: float) -> QualityResult | None:
        """Known quality for the candidate's numerics, waiting while another worker measures it.
        None: this worker must measure it (and then holds the lease on doing so)."""
        key = candidate.numerics_key()
        while True:
            quality = self._cached_quality(candidate)
            if quality is not None or self.store is None:
                return quality
            label = f"the quality of {candidate.label()}'s numerics"
            if self.store.claim(QUALITY_CLAIM_PREFIX + key, self.search_cfg.lease_seconds, label):
                return None
            if time.perf_counter() > deadline:
                return None  # measure it here rather than wait forever
            time.sleep(QUALITY_POLL_SECONDS)

    def _probe_deaths(self, candidate: Candidate) -> int:
        """Processes that died in this numerics' quality probe. Taking the probe's lease over from a
        holder that died records its death first; the lease is given up again until the probe."""
        if self.store is None:
            return 0
        probe = PROBE_CLAIM_PREFIX + candidate.numerics_key()
        if self.store.claim(
            probe, self.search_cfg.lease_seconds, f"the quality probe of {candidate.label()}'s numerics"
        ):
            self.store.release(probe)
        return self.store.deaths_probing(candidate)

    def _device(self, exclusive: bool) -> AbstractContextManager[None]:
        if self.device is None:
            return nullcontext()
        return self.device.exclusive() if exclusive else self.device.shared()

    def evaluate(
        self, candidate: Candidate, role: str = "candidate", stop_below: float | None = None
    ) -> CandidateResult:
        """Never raises for a candidate's own failure: failure is a result with its error. With
        `stop_below`, windows after one whose running goodput tokens/J is below it are skipped
        (the candidate cannot win: multi-fidelity screening). Watched: one still running well past
        search.candidate_timeout_minutes (hung) is recorded failed (in the store holding its lease:
        watchdog.leases_in) and ends the process."""
        timeout = self.search_cfg.candidate_timeout_minutes
        with self.watchdog.watching(candidate, role, self.store, timeout) as watch:
            watch.on_hang = lambda: self._settle_hang(candidate, watch)
            try:
                # a caller that defers interrupts (to store the result) defers none in here
                with interruptible():
                    return self._evaluate(candidate, role, stop_below, watch)
            finally:
                if self.store is not None:  # a no-op unless still held
                    self.store.release(QUALITY_CLAIM_PREFIX + candidate.numerics_key())

    def _settle_hang(self, candidate: Candidate, watch: Watch) -> None:
        """The numerics' leases of a candidate its watchdog ends: none is left to lapse. A hang in
        the quality probe is a fact about the numerics, as a crash there is (every batch size
        probes alike): it counts as one death of their probe, recorded as a hang, so that two fail
        them (DEATHS_BEFORE_FAILING) with a reason that says so; a hang elsewhere is the
        candidate's own."""
        if self.store is None:
            return
        numerics = candidate.numerics_key()
        if watch.phase == PROBING:
            self.store.hung(PROBE_CLAIM_PREFIX + numerics)
        self.store.release(QUALITY_CLAIM_PREFIX + numerics)

    def _settle_reference_hang(self, candidate: Candidate, watch: Watch) -> None:
        """A hang of the reference: the waiting candidate's leases given up unrecorded, no death."""
        self._settle_hang(candidate, watch)
        watch.give_up_lease()

    def _evaluate(
        self, candidate: Candidate, role: str, stop_below: float | None, watch: Watch
    ) -> CandidateResult:
        start = time.perf_counter()
        timeout = self.search_cfg.candidate_timeout_minutes * 60
        deadline = start + timeout  # for the wait for another worker's quality, which is aside
        build_seconds = 0.0
        artifact: dict[str, Any] | None = None
        numerics = candidate.numerics_key()
        try:
            watch.phase = "waiting for its numerics' quality"
            with watch.aside():
                quality = self._shared_quality(candidate, deadline)
            if quality is None:
                if (deaths := self._probe_deaths(candidate)) >= DEATHS_BEFORE_FAILING:
                    hung = self.store.deaths_probing(candidate, hung=True) if self.store else 0
                    return died_probing(candidate, deaths, role, hung)
                # before this candidate's engine (never two models in memory); its time is its own
                watch.phase = "waiting for the quality reference"
                with watch.aside():
                    self.reference(on_hang=lambda: self._settle_reference_hang(candidate, watch))
            elif (broken := quality.violations(self.quality_cfg)) and role != "baseline":
                return self._result(candidate, REJECTED, "; ".join(broken), quality, None, role, start, 0.0)
            with watch.waiting(self._device(exclusive=False)), artifacts_used() as used:
                watch.phase = "building"
                engine = build_engine(self.model, candidate, self.target, self.workdir)
                build_seconds = time.perf_counter() - start
                artifact = served_artifact(used)
                if quality is None:
                    watch.phase = PROBING
                    quality = self._measure_quality(engine, numerics, candidate.label())
            closed = False
            try:
                broken = quality.violations(self.quality_cfg)
                if broken and role != "baseline":
                    return self._result(
                        candidate,
                        REJECTED,
                        "; ".join(broken),
                        quality,
                        None,
                        role,
                        start,
                        build_seconds,
                        artifact,
                    )
                with watch.waiting(self._device(exclusive=True)):
                    try:
                        watch.phase = "measuring"
                        self._still_leased(candidate)
                        self._check_generate_paths(engine, candidate)
                        # the time it waited its turn is not its own (the watch's limit too)
                        own = start + timeout + watch.waited
                        performance = self._measure(engine, candidate, own, stop_below)
                    finally:
                        # still holding the device: a multi-process engine's ranks exit (and free
                        # their memory) before another worker's windows start
                        closed = True
                        engine.close()
            finally:
                if not closed:
                    with self._device(exclusive=False):  # never during another worker's windows
                        engine.close()
            status = REJECTED if broken else MEASURED  # only the baseline is measured despite a broken bound
            reason = "; ".join(broken) or None
            return self._result(
                candidate, status, reason, quality, performance, role, start, build_seconds, artifact
            )
        except ReferenceNotFinite:
            raise  # the run's configuration, not this candidate: it stops the run
        except Exception as exc:  # noqa: BLE001 - any candidate failure is data, the search goes on
            log.debug("candidate %s failed:\n%s", candidate.label(), traceback.format_exc())
            _release_device_memory()
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            return self._result(candidate, FAILED, reason, None, None, role, start, build_seconds)

    def _still_leased(self, candidate: Candidate) -> None:
        """Raise when another worker took the candidate's lease over (this one stalled past it):
        that one measures it, and two measurements at once would skew each other's energy."""
        if self.store is not None and (label := self.store.lost(candidate.key())) is not None:
            raise LeaseLost(
                f"another worker took {label} over after this one renewed nothing for "
                f"search.lease_seconds={self.search_cfg.lease_seconds:g} (a stall); it measures it"
            )

    def _check_generate_paths(self, engine: Engine, candidate: Candidate) -> None:
        """Paths the probe never runs (compiled, captured, static cache, decode kernels) must decode
        greedily what the probed forward decodes; on the workload's own shape, so that this
        batch is also their warm-up (compilation, capture) before any window."""
        settings = candidate.settings
        if getattr(settings, "generate_only_paths", False):
            reserve = getattr(engine, "reserve", None)
            if self.streams and reserve is not None:
                # sized for the stream first, so that the check's compile and capture are the
                # ones the stream runs with (loop=slots rebuilds them when it grows)
                reserve(max(s.longest_request_tokens for s in self.streams.values()))
            prompts = self.workload.batch(0, candidate.batch_size)
            check_greedy_parity(
                engine, prompts, self.workload.max_new_tokens, getattr(settings, "precision", "fp32")
            )

    def _measure(
        self, engine: Engine, candidate: Candidate, deadline: float, stop_below: float | None = None
    ) -> PerformanceResult:
        """Offline batches, or the request stream at every offered load (serving)."""
        meter = meter_for_engine(self.meter, engine)  # every GPU board a layout's ranks use
        if self.streams:
            return measure_load(
                engine,
                candidate.batch_size,
                self.streams,
                meter,
                self.workload_cfg,
                deadline,
                stop_below,
            )
        return measure_performance(
            engine, self.workload, candidate.batch_size, meter, self.workload_cfg, deadline, stop_below
        )

    def _measure_quality(self, engine: Engine, numerics: str, label: str) -> QualityResult:
        # The probe's own lease, held around the probe alone: a death in it is the numerics' (every
        # batch size probes alike), one in a build or an energy window the candidate's alone. Held
        # by a live worker, it is measured here all the same (the quality lease's wait ran out).
        probe = PROBE_CLAIM_PREFIX + numerics
        if self.store is not None:
            self.store.claim(probe, self.search_cfg.lease_seconds, f"the quality probe of {label}'s numerics")
        try:
            quality = evaluate_quality(engine, self.reference())
        except BaseException:
            engine.close()
            raise
        finally:
            if self.store is not None:
                self.store.release(probe)
        self._quality[numerics] = quality
        if self.store is not None:
            self.store.put_quality(numerics, quality.to_dict())
        return quality

    @staticmethod
    def _result(
        candidate: Candidate,
        status: str,
        reason: str | None,
        quality: QualityResult | None,
        performance: PerformanceResult | None,
        role: str,
        start: float,
        build_seconds: float,
        artifact: dict[str, Any] | None = None,
    ) -> CandidateResult:
        return CandidateResult(
            candidate=candidate,
            status=status,
            reason=reason,
            quality=quality,
            performance=performance,
            role=role,
            build_seconds=build_seconds,
            artifact=artifact,
            seconds=time.perf_counter() - start,
            finished_at=now_iso(),
        )


def _release_device_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
