"""Schema of conf/workload/: the requests, the latency SLO and the energy-window protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from optimizer.config.checks import require


@dataclass
class SloConfig:
    """Latency SLO per request, checked at `percentile` over all requests. null disables one."""

    percentile: float = 90.0
    ttft_ms: float | None = None
    tpot_ms: float | None = 250.0

    def __post_init__(self) -> None:
        require(0 < self.percentile <= 100, "workload.slo.percentile", "must be in (0, 100]", "e.g. 90")
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            require(
                value is None or value > 0,
                f"workload.slo.{name}",
                f"must be > 0 or null, got {value}",
                "give a latency in milliseconds",
            )


@dataclass
class WorkloadConfig:
    """Requests and the energy-window protocol used to measure every candidate."""

    prompt_tokens: int = 64
    max_new_tokens: int = 32
    min_window_seconds: float = 5.0
    repeats: int = 3
    warmup_batches: int = 1
    idle_seconds: float = 5.0
    slo: SloConfig = field(default_factory=SloConfig)

    def __post_init__(self) -> None:
        require(self.prompt_tokens >= 1, "workload.prompt_tokens", "must be >= 1", "e.g. 64")
        require(self.max_new_tokens >= 2, "workload.max_new_tokens", "must be >= 2", "e.g. 32")
        require(self.min_window_seconds > 0, "workload.min_window_seconds", "must be > 0", "e.g. 5")
        require(self.repeats >= 1, "workload.repeats", "must be >= 1", "use >= 3 for a spread")
        require(self.warmup_batches >= 0, "workload.warmup_batches", "must be >= 0", "e.g. 1")
        require(self.idle_seconds >= 0, "workload.idle_seconds", "must be >= 0", "e.g. 5")
