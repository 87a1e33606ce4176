"""CandidateResult: what one candidate produced, whether measured, rejected, failed or pruned.

Failure is data: a candidate that crashes or breaks the quality bound is a result with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from optimizer.config import QualityConfig
from optimizer.measure.quality import QualityResult
from optimizer.measure.workload import PerformanceResult
from optimizer.space import Candidate

MEASURED = "measured"
REJECTED = "rejected"  # broke the quality bound: no energy window was spent on it
FAILED = "failed"  # build or run raised (export error, out of memory, timeout)
PRUNED = "pruned"  # skipped before building (does not fit memory, ...)
STATUSES = (MEASURED, REJECTED, FAILED, PRUNED)


def sig3_decimals(value: float) -> int:
    """Decimals that show `value` to three significant digits (none past the units: 1234, not 1230).
    The report's tokens/J run from ~0.01 (a billions-parameter model on a CPU) to thousands: fixed
    decimals print two candidates 8% apart alike at one end."""
    if value == 0 or not math.isfinite(value):
        return 0
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    rounded = round(abs(value), decimals)  # 9.996 rounds up to 10.0: one decimal less
    return max(0, decimals - 1) if rounded and math.floor(math.log10(rounded)) > 2 - decimals else decimals


def sig3(value: float, decimals: int | None = None) -> str:
    """`value` (tokens/J, a roll-up's kWh) in fixed notation to three significant digits (11.5,
    0.0104, 1234: no 1.23e+03), or to `decimals` (an sd beside its mean)."""
    return f"{value:.{sig3_decimals(value) if decimals is None else decimals}f}"


def ratio_text(ratio: float) -> str:
    """A gain over the baseline to two decimals (0.96 and 1.04 both read 1.0 at one), three when
    it is just below 1 (0.996 read 1.00, "over the baseline")."""
    return f"{ratio:.3f}" if ratio < 1 <= round(ratio, 2) else f"{ratio:.2f}"


@dataclass(frozen=True)
class CandidateResult:
    candidate: Candidate
    status: str
    reason: str | None = None
    quality: QualityResult | None = None
    performance: PerformanceResult | None = None
    role: str = "candidate"  # or "baseline", or "finalist" (a re-measurement of a candidate)
    build_seconds: float = 0.0
    # the build artifact the engine served ({"what", "files": {path: sha256}}); None where it
    # served the model's own weights
    artifact: dict[str, Any] | None = None
    seconds: float = 0.0  # wall time this candidate cost the search
    finished_at: str = ""
    reused: bool = False  # loaded from the store instead of measured in this run

    @property
    def feasible(self) -> bool:
        """Measured, inside the quality bound (checked before measuring) and inside the SLO."""
        return self.status == MEASURED and self.performance is not None and self.performance.slo_met

    @property
    def objective(self) -> float:
        """Goodput tokens per joule (mean over windows); 0 when not measured."""
        return self.performance.goodput_tokens_per_joule.mean if self.performance else 0.0

    def rejudged(self, bound: QualityConfig) -> CandidateResult | None:
        """This stored result judged against this run's quality bound (the bound is not part of
        the store key). None when it now passes but was never measured: it must be measured."""
        if self.quality is None or self.status not in (MEASURED, REJECTED):
            return self
        broken = self.quality.violations(bound)
        if broken:
            return replace(self, status=REJECTED, reason="; ".join(broken))
        if self.performance is None:
            return None
        return replace(self, status=MEASURED, reason=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "label": self.candidate.label(),
            "status": self.status,
            "reason": self.reason,
            "role": self.role,
            "quality": self.quality.to_dict() if self.quality else None,
            "performance": self.performance.to_dict() if self.performance else None,
            "build_seconds": self.build_seconds,
            "artifact": self.artifact,
            "seconds": self.seconds,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return cls(
            candidate=Candidate.from_dict(data["candidate"]),
            status=data["status"],
            reason=data.get("reason"),
            role=data.get("role", "candidate"),
            quality=QualityResult(**data["quality"]) if data.get("quality") else None,
            performance=PerformanceResult.from_dict(data["performance"]) if data.get("performance") else None,
            build_seconds=data.get("build_seconds", 0.0),
            artifact=data.get("artifact"),
            seconds=data.get("seconds", 0.0),
            finished_at=data.get("finished_at", ""),
        )
