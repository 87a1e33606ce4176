"""The workload run inside steady-state energy windows.

Protocol: warm up, then `repeats` windows; each window repeats batches until it lasts at least
`min_window_seconds`. Tokens per joule is reported per window (mean and spread). Throughput
counts every output token; goodput only the tokens of requests that met the SLO.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from optimizer.config import WorkloadConfig
from optimizer.measure.energy import undisturbed
from optimizer.measure.latency import LatencySummary, request_meets_slo, slo_violations
from optimizer.measure.speed import cpu_probe_mibps, warn_if_slow

if TYPE_CHECKING:
    import torch

    from optimizer.backends.base import Engine, Generation
    from optimizer.measure.energy import EnergyMeter, Measurement


@dataclass(frozen=True)
class Workload:
    prompts: torch.Tensor  # [pool, prompt_tokens]; batches cycle through the pool
    max_new_tokens: int

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        import torch

        pool = self.prompts.shape[0]
        rows = [(index * batch_size + i) % pool for i in range(batch_size)]
        return self.prompts[torch.tensor(rows)]


@dataclass(frozen=True)
class WindowResult:
    """One energy window. Units: joules, seconds, tokens."""

    source: str
    joules: float
    active_joules: float
    seconds: float
    output_tokens: int
    goodput_tokens: int
    polled_joules: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    warnings: list[str] = field(default_factory=list)
    # the cores' speed just before the window, MiB hashed per CPU second (measure/speed.py; None:
    # not probed, a result stored before the probe existed)
    cpu_probe_mibps: float | None = None

    @classmethod
    def of(
        cls,
        measurement: Measurement,
        output_tokens: int,
        goodput_tokens: int,
        warnings: list[str],
        cpu_probe_mibps: float | None,
    ) -> WindowResult:
        """A closed meter window with the tokens it produced."""
        return cls(
            source=measurement.source,
            joules=measurement.joules,
            active_joules=measurement.active_joules,
            seconds=measurement.seconds,
            output_tokens=output_tokens,
            goodput_tokens=goodput_tokens,
            polled_joules=measurement.polled_joules,
            temperature_c=measurement.temperature_c,
            sm_clock_mhz=measurement.sm_clock_mhz,
            warnings=warnings,
            cpu_probe_mibps=cpu_probe_mibps,
        )

    @property
    def tokens_per_joule(self) -> float:
        return self.output_tokens / self.joules if self.joules > 0 else 0.0

    @property
    def goodput_tokens_per_joule(self) -> float:
        return self.goodput_tokens / self.joules if self.joules > 0 else 0.0

    @property
    def active_tokens_per_joule(self) -> float:
        return self.output_tokens / self.active_joules if self.active_joules > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(
            mean=statistics.fmean(values),
            std=statistics.stdev(values) if len(values) > 1 else 0.0,
            min=min(values),
            max=max(values),
        )


@dataclass(frozen=True)
class ServingSummary:
    """What a serving measurement adds to PerformanceResult. Units: requests/s, joules, ms.

    `curve` has one point per offered load measured (rate, goodput and all tokens/J, p90 TTFT
    and TPOT, the share of requests that met the SLO, whether the queue grew); `capacity_rate`
    is the highest of those rates at which >= 90% of requests met the SLO (None: none did).
    """

    stream: str
    stream_sha256: str
    rate: float  # the offered load this result is for (requests/s: workload.rate, or a trace's own)
    offered_rate: float  # requests/s between the stream's first and last arrival
    requests: int
    window_requests: int
    met_slo_fraction: float  # of the requests judged (those arriving inside the windows)
    joules_per_request: float | None  # None: no request completed inside a window
    idle_fraction: float
    mean_in_flight: float
    growing_windows: int
    ttft_p90_ms: float
    e2e_p90_ms: float
    max_lateness_ms: float
    prefix: dict[str, float] = field(default_factory=dict)  # engine-reported prefix-cache counters
    curve: list[dict[str, float]] = field(default_factory=list)
    capacity_rate: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# joins a mixed result's sources into its label: no energy source's name (energy.py) holds it
SOURCE_JOIN = "+"


def source_label(sources: Iterable[str]) -> str:
    """The label of windows' energy sources: the one source, or every one in order of first use
    joined by `+` (an NVML meter that fell back from its counter to polled power mid-run)."""
    return SOURCE_JOIN.join(dict.fromkeys(sources))


def label_sources(label: str) -> tuple[str, ...]:
    """The energy sources a label (`source_label`, or a recorded single source) names."""
    return tuple(label.split(SOURCE_JOIN))


@dataclass(frozen=True)
class PerformanceResult:
    """Everything measured for one candidate's workload. `source` labels every energy source its
    windows used (`source_label`); `sources` lists them."""

    source: str
    idle_watts: float
    windows: list[WindowResult]
    tokens_per_joule: Spread
    goodput_tokens_per_joule: Spread
    active_tokens_per_joule: Spread
    tokens_per_second: Spread
    watts: Spread
    latency: LatencySummary
    slo_violations: list[str]
    goodput_fraction: float
    serving: ServingSummary | None = None  # a request stream's steady state; None: closed batches
    # every window's goodput tokens over all their joules: energy per token for the roll-up, where a
    # mean of per-window ratios runs high when windows differ (1/mean(x) <= mean(1/x)); None: built
    # by hand without windows' totals, and `pooled_goodput` falls back to the mean
    pooled_goodput_tokens_per_joule: float | None = None

    @classmethod
    def of_windows(
        cls,
        windows: list[WindowResult],
        idle_watts: float,
        latency: LatencySummary,
        slo_violations: list[str],
        serving: ServingSummary | None = None,
    ) -> PerformanceResult:
        """The per-window figures as spreads, and the goodput share of every output token: the one
        summary that offline batches, a stream's runs and a finalist's pooled rounds all use."""
        output = sum(w.output_tokens for w in windows)
        # a window at or below the idle baseline has no active energy to divide by (idle was
        # overestimated; flagged by report/flags.py): left out rather than averaged in as 0 tok/J
        above_idle = [w.active_tokens_per_joule for w in windows if w.active_joules > 0]
        return cls(
            source=source_label(w.source for w in windows),
            idle_watts=idle_watts,
            windows=windows,
            tokens_per_joule=Spread.of([w.tokens_per_joule for w in windows]),
            goodput_tokens_per_joule=Spread.of([w.goodput_tokens_per_joule for w in windows]),
            active_tokens_per_joule=Spread.of(above_idle or [0.0]),  # 0: none above idle
            tokens_per_second=Spread.of([w.tokens_per_second for w in windows]),
            watts=Spread.of([w.watts for w in windows]),
            latency=latency,
            slo_violations=slo_violations,
            goodput_fraction=sum(w.goodput_tokens for w in windows) / output if output else 0.0,
            serving=serving,
            pooled_goodput_tokens_per_joule=pooled_goodput_of(windows),
        )

    @property
    def slo_met(self) -> bool:
        return not self.slo_violations

    @property
    def sources(self) -> tuple[str, ...]:
        """Every energy source of its windows, first used first (its label's, built without any)."""
        return tuple(dict.fromkeys(w.source for w in self.windows)) or label_sources(self.source)

    @property
    def is_estimate(self) -> bool:
        """Any window's joules the estimate's: the whole result is then no measurement."""
        return "estimate" in self.sources

    @property
    def pooled_goodput(self) -> float:
        """Goodput tokens per joule over all windows together (the mean where not recorded)."""
        pooled = self.pooled_goodput_tokens_per_joule
        return self.goodput_tokens_per_joule.mean if pooled is None else pooled

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["windows"] = [asdict(w) | {"tokens_per_joule": w.tokens_per_joule} for w in self.windows]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformanceResult:
        windows = [
            WindowResult(**{k: v for k, v in w.items() if k != "tokens_per_joule"}) for w in data["windows"]
        ]
        spreads = {
            k: Spread(**data[k])
            for k in (
                "tokens_per_joule",
                "goodput_tokens_per_joule",
                "active_tokens_per_joule",
                "tokens_per_second",
                "watts",
            )
        }
        serving = data.get("serving")
        return cls(
            # a row stored before results carried every source was labelled by its first window's
            source=source_label(w.source for w in windows) if windows else data["source"],
            idle_watts=data["idle_watts"],
            windows=windows,
            latency=LatencySummary(**data["latency"]),
            slo_violations=list(data["slo_violations"]),
            goodput_fraction=data["goodput_fraction"],
            serving=ServingSummary(**serving) if serving else None,
            # a result stored before the field existed still has every window's joules and tokens
            pooled_goodput_tokens_per_joule=data.get(
                "pooled_goodput_tokens_per_joule", pooled_goodput_of(windows)
            ),
            **spreads,
        )


def pooled_goodput_of(windows: list[WindowResult]) -> float | None:
    """Goodput tokens over joules, summed over `windows`; None without a joule to divide by."""
    joules = sum(w.joules for w in windows)
    return sum(w.goodput_tokens for w in windows) / joules if joules > 0 else None


class CandidateTimeout(TimeoutError):
    """The candidate ran past search.candidate_timeout_minutes (checked between batches and
    between a stream's runs)."""


def check_deadline(deadline: float | None) -> None:
    """CandidateTimeout once time.perf_counter() is past `deadline` (None: no limit)."""
    if deadline is not None and time.perf_counter() > deadline:
        raise CandidateTimeout("ran past search.candidate_timeout_minutes")


def screened_out(windows: list[WindowResult], repeats: int, stop_below: float | None) -> bool:
    """Multi-fidelity: after a window, a candidate whose goodput tokens/J so far is below
    `stop_below` (the best so far, less the search's screen margin) cannot win, so its remaining
    windows are skipped; its last window says so."""
    if stop_below is None or len(windows) >= repeats:
        return False
    so_far = sum(w.goodput_tokens_per_joule for w in windows) / len(windows)
    if so_far >= stop_below:
        return False
    windows[-1].warnings.append(
        f"screened out after {len(windows)} of {repeats} windows: {so_far:.3g} goodput tok/J "
        f"< {stop_below:.3g} (the best so far less search.screen_margin)"
    )
    return True


def measure_performance(
    engine: Engine,
    workload: Workload,
    batch_size: int,
    meter: EnergyMeter,
    cfg: WorkloadConfig,
    deadline: float | None = None,
    stop_below: float | None = None,
    probe: Callable[[], float] = cpu_probe_mibps,
) -> PerformanceResult:
    """Warm-up batches, then `cfg.repeats` windows (fewer when screened out below `stop_below`),
    each preceded by the cores' speed probe (`probe`)."""
    for index in range(cfg.warmup_batches):
        engine.generate(workload.batch(index, batch_size), workload.max_new_tokens)
        check_deadline(deadline)
    windows: list[WindowResult] = []
    ttfts: list[float] = []
    tpots: list[float] = []
    batch_index = cfg.warmup_batches

    def window() -> tuple[Measurement, list[Generation], float]:
        nonlocal batch_index
        generations: list[Generation] = []
        speed = probe()  # between batches: the engine is idle
        warn_if_slow(speed)
        with meter.window() as measurement:
            start = time.perf_counter()
            while not generations or time.perf_counter() - start < cfg.min_window_seconds:
                generations.append(
                    engine.generate(workload.batch(batch_index, batch_size), workload.max_new_tokens)
                )
                batch_index += 1
                check_deadline(deadline)
        return measurement, generations, speed

    for _ in range(cfg.repeats):
        (measurement, generations, speed), notes = undisturbed(
            window, lambda kept: kept[0], cfg.disturbed_retries
        )
        goodput = 0
        for gen in generations:
            for ttft, tpot in gen.latencies():
                ttfts.append(ttft)
                tpots.append(tpot)
                if request_meets_slo(ttft, tpot, cfg.slo):
                    goodput += gen.new_tokens
        output = sum(g.output_tokens for g in generations)
        windows.append(WindowResult.of(measurement, output, goodput, [*notes, *measurement.warnings], speed))
        if screened_out(windows, cfg.repeats, stop_below):
            break
    return PerformanceResult.of_windows(
        windows,
        idle_watts=meter.idle_watts,
        latency=LatencySummary.of(ttfts, tpots, cfg.slo.percentile),
        slo_violations=slo_violations(ttfts, tpots, cfg.slo),
    )
