"""Latency percentiles per request and the SLO test that decides goodput."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from optimizer.config import SloConfig

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentile_key(q: float) -> str:
    """The summary's key of a percentile: p90, p99.9."""
    return f"p{q:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Per-request latency percentiles in milliseconds: time to first token and per output token."""

    requests: int
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]

    @classmethod
    def of(
        cls, ttft_seconds: Sequence[float], tpot_seconds: Sequence[float], slo_percentile: float = 90.0
    ) -> LatencySummary:
        """p50, p90, p99 and the SLO's own percentile (p95 when the SLO is set there)."""
        quantiles = sorted({*PERCENTILES, slo_percentile})
        return cls(
            requests=len(ttft_seconds),
            ttft_ms={percentile_key(q): 1000 * percentile(ttft_seconds, q) for q in quantiles},
            tpot_ms={percentile_key(q): 1000 * percentile(tpot_seconds, q) for q in quantiles},
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def request_meets_slo(ttft_seconds: float, tpot_seconds: float, slo: SloConfig) -> bool:
    if slo.ttft_ms is not None and ttft_seconds * 1000 > slo.ttft_ms:
        return False
    return not (slo.tpot_ms is not None and tpot_seconds * 1000 > slo.tpot_ms)


def slo_violations(ttft_seconds: Sequence[float], tpot_seconds: Sequence[float], slo: SloConfig) -> list[str]:
    """SLO limits broken at the configured percentile, each naming the field and both numbers."""
    broken = []
    q = slo.percentile
    if slo.ttft_ms is not None and (value := 1000 * percentile(ttft_seconds, q)) > slo.ttft_ms:
        broken.append(f"TTFT p{q:g} {value:.0f} ms > workload.slo.ttft_ms {slo.ttft_ms:g}")
    if slo.tpot_ms is not None and (value := 1000 * percentile(tpot_seconds, q)) > slo.tpot_ms:
        broken.append(f"TPOT p{q:g} {value:.0f} ms > workload.slo.tpot_ms {slo.tpot_ms:g}")
    return broken


def unfinished_violation(timed: int, unfinished: int, slo: SloConfig) -> list[str]:
    """The TPOT target broken by requests given up unfinished: left out of the TPOT percentile
    (they have no time per token), they still never finished, so with them counted as unbounded
    the percentile is unbounded once they reach its rank. Without it, a TPOT-only SLO would hold
    for a run that served none of its window's requests (the TTFT target catches them otherwise)."""
    if slo.tpot_ms is None or not unfinished:
        return []
    # the percentile of 0 for each timed request and 1 for each unfinished one is above 0 exactly
    # when an unbounded value enters it (`inf` itself would interpolate to nan at an exact rank)
    if percentile([0.0] * timed + [1.0] * unfinished, slo.percentile) == 0:
        return []
    return [
        f"TPOT p{slo.percentile:g} unbounded: {unfinished} of {timed + unfinished} requests in the windows "
        f"were given up unfinished > workload.slo.tpot_ms {slo.tpot_ms:g}"
    ]


def unfinished_tpot_violation(timed: Sequence[float], unfinished: int, slo: SloConfig) -> list[str]:
    """The TPOT target broken by requests given up unfinished (`timed`: the finished requests' TPOTs,
    seconds): `unfinished_violation` where they reach the percentile's rank, else the percentile
    with them counted above every timed one, which shifts its rank up though it stays bounded (19
    timed and 1 unfinished: p90 is rank 17.1 of 20, not 16.2 of 19). Nothing where the timed ones
    alone break the target: `slo_violations` names that."""
    if slo.tpot_ms is None or not unfinished:
        return []
    if unbounded := unfinished_violation(len(timed), unfinished, slo):
        return unbounded
    q = slo.percentile
    if 1000 * percentile(timed, q) > slo.tpot_ms:
        return []
    ordered = sorted(timed)
    rank = (len(ordered) + unfinished - 1) * q / 100
    low = int(rank)  # the rank's values are both timed ones, or unfinished_violation had said so
    value = 1000 * percentile(ordered[low : low + 2], 100 * (rank - low))
    if value <= slo.tpot_ms:
        return []
    return [
        f"TPOT p{q:g} {value:.0f} ms with the {unfinished} of {len(timed) + unfinished} requests in the "
        f"windows given up unfinished counted above every finished one > workload.slo.tpot_ms {slo.tpot_ms:g}"
    ]
