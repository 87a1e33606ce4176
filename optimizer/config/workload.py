"""Schema of conf/workload/: the requests, the latency SLO and the energy-window protocol.

`kind: offline` runs closed, lockstep batches of equal prompts (a batch job). `kind: serving`
offers a request stream (arrivals at a rate, mixed lengths, conversations, or a trace file) and
measures the steady state; see optimizer/measure/stream.py and serving.py.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import MISSING, dataclass, field, fields

from optimizer.config.checks import require, require_finite, require_subset

log = logging.getLogger(__name__)

WORKLOAD_KINDS = ("offline", "serving")
ARRIVALS = ("poisson", "constant", "gamma")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")
ARRIVAL_CV_DEFAULT = 1.0
TURN_GAP_DEFAULT = 5.0
# What only a request stream reads: set on an offline workload, each would be ignored without a word
SERVING_FIELDS = (
    "rate",
    "rates",
    "requests",
    "arrivals",
    "arrival_cv",
    "prompt_lengths",
    "output_lengths",
    "shared_prefix_tokens",
    "turns",
    "turn_gap_seconds",
    "trace",
    "warmup_requests",
    "drain_requests",
)


@functools.cache
def warn_unused_turn_gap(gap: float) -> None:
    """Once per value: a run composes its config more than once."""
    log.warning(
        "workload.turn_gap_seconds=%g is ignored: workload.turns=1 sends single requests "
        "(set workload.turns>1 for conversations whose turns are that far apart)",
        gap,
    )


# What only a generated stream reads: a trace brings its own requests, arrivals and lengths
# (`rates` is refused beside a trace with the config: WorkloadConfig.__post_init__)
TRACE_IGNORES = tuple(
    f for f in SERVING_FIELDS if f not in ("rates", "trace", "warmup_requests", "drain_requests")
)


def warn_overrides_a_trace_ignores(workload: WorkloadConfig, given: set[str]) -> None:
    """Say which of the overrides `given` (the keys a run was composed with) a trace ignores.
    Only overrides: a preset's values (workload=chat's rate and lengths) beside a trace are not
    the user's doing, and a recipe's recorded ones are not the verifier's."""
    if not workload.trace:
        return
    ignored = sorted(
        key for key in given if key.split(".")[:2] in (["workload", name] for name in TRACE_IGNORES)
    )
    if ignored:
        log.warning(
            "%s ignored: workload.trace sets the requests, their arrivals and lengths (replayed at its own times)",
            ", ".join(ignored),
        )


@dataclass
class SloConfig:
    """Latency SLO per request, checked at `percentile` over all requests. null disables one."""

    percentile: float = 90.0
    ttft_ms: float | None = None
    tpot_ms: float | None = 250.0

    def __post_init__(self) -> None:
        require_finite(self, "workload.slo")
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
class LengthConfig:
    """Token counts of a serving stream: `fixed` (mean), `uniform` (min..max) or `lognormal`
    (mean and coefficient of variation cv), always clamped to [min, max]."""

    kind: str = "lognormal"
    mean: int = 128
    min: int = 16
    max: int = 512
    cv: float = 0.5

    def check(self, field_name: str) -> None:
        require_subset([self.kind], LENGTH_KINDS, f"{field_name}.kind")
        require_finite(self, field_name)
        require(
            1 <= self.min <= self.max,
            field_name,
            f"needs 1 <= min <= max, got min {self.min}, max {self.max}",
            "e.g. min: 16, max: 512",
        )
        require(  # uniform draws from min..max alone: its (default) mean must not refuse them
            self.kind == "uniform" or self.min <= self.mean <= self.max,
            f"{field_name}.mean",
            f"{self.mean} is outside [min {self.min}, max {self.max}]",
            "put the mean inside min..max",
        )
        require(self.cv >= 0, f"{field_name}.cv", f"is {self.cv} < 0", "a coefficient of variation is >= 0")


@dataclass
class WorkloadConfig:
    """Requests and the energy-window protocol used to measure every candidate.

    Offline fields: prompt_tokens, max_new_tokens, warmup_batches. Serving fields: rate and the
    stream's shape; each serving measurement is `repeats` runs of the same seeded stream, each
    with one energy window from the arrival after `warmup_requests` to the one `drain_requests`
    before the last.
    """

    kind: str = "offline"
    prompt_tokens: int = 64
    max_new_tokens: int = 32
    min_window_seconds: float = 5.0
    repeats: int = 3
    warmup_batches: int = 1
    idle_seconds: float = 5.0
    slo: SloConfig = field(default_factory=SloConfig)
    # serving: the rate the recipe is selected for (requests/s), and optional load-curve rates
    rate: float = 1.0
    rates: list[float] = field(default_factory=list)
    requests: int = 40
    arrivals: str = "poisson"
    arrival_cv: float = ARRIVAL_CV_DEFAULT  # gamma arrivals: > 1 is bursty
    prompt_lengths: LengthConfig = field(default_factory=LengthConfig)
    output_lengths: LengthConfig = field(default_factory=lambda: LengthConfig("lognormal", 64, 8, 256, 0.5))
    shared_prefix_tokens: int = 0  # a system prompt every request starts with, before its prompt_lengths
    turns: int = 1  # > 1: conversations that resend their whole history every turn
    turn_gap_seconds: float = TURN_GAP_DEFAULT
    seed: int = 0
    trace: str | None = None  # a JSONL trace replaces the generated stream
    warmup_requests: int = 4
    drain_requests: int = 4
    # A window (offline), a run of the stream (serving) or RAPL's idle window during which the
    # hypervisor or other processes took the CPU (/proc/stat, or a CPU quota's cgroup counters;
    # measure/cpu_time.py) is measured again, up to this many times, after a wait for a quiet CPU;
    # the last attempt counts, flagged if it was disturbed too. Not in the store key: it picks
    # windows, not how they are measured.
    disturbed_retries: int = 1

    def __post_init__(self) -> None:
        require_subset([self.kind], WORKLOAD_KINDS, "workload.kind")
        require_finite(self, "workload")
        require(self.prompt_tokens >= 1, "workload.prompt_tokens", "must be >= 1", "e.g. 64")
        require(self.max_new_tokens >= 2, "workload.max_new_tokens", "must be >= 2", "e.g. 32")
        require(self.min_window_seconds > 0, "workload.min_window_seconds", "must be > 0", "e.g. 5")
        require(self.repeats >= 1, "workload.repeats", "must be >= 1", "use >= 3 for a spread")
        require(self.warmup_batches >= 0, "workload.warmup_batches", "must be >= 0", "e.g. 1")
        require(self.idle_seconds >= 0, "workload.idle_seconds", "must be >= 0", "e.g. 5")
        require(
            self.disturbed_retries >= 0,
            "workload.disturbed_retries",
            f"is {self.disturbed_retries}",
            "0 keeps every window as measured; e.g. 1",
        )
        require(
            self.rate > 0,
            "workload.rate",
            f"is {self.rate}: a stream needs a rate > 0 requests/s",
            "e.g. 1.0",
        )
        require(
            all(r > 0 for r in self.rates),
            "workload.rates",
            f"has a rate <= 0: {self.rates}",
            "offered loads in requests/s, e.g. [0.5,1,2]",
        )
        require(
            self.requests >= 2,
            "workload.requests",
            f"is {self.requests}",
            "a stream needs >= 2 requests, e.g. 40",
        )
        require_subset([self.arrivals], ARRIVALS, "workload.arrivals")
        ignored = [] if self.serving else self._serving_fields_set()
        require(
            not ignored,
            f"workload.{ignored[0] if ignored else ''}",
            "is read only by a serving workload (a request stream); this one is kind=offline "
            "(closed batches), which would ignore it",
            "add workload.kind=serving (`kind: serving` in your own preset), or start from a serving "
            "preset: workload=chat",
        )
        # here, not when the stream is made: that comes after the model is resolved and tokenized
        require(
            not (self.trace and self.rates),
            "workload.rates",
            "a trace is replayed at its own arrival times: it has one offered load, its own",
            "drop workload.rates (for a load curve, use a generated stream: workload=chat)",
        )
        require(
            self.arrivals != "gamma" or self.arrival_cv > 0,
            "workload.arrival_cv",
            f"is {self.arrival_cv}",
            "gamma arrivals need a cv > 0 (1 is Poisson, 2 is bursty)",
        )
        require(
            self.arrivals == "gamma" or self.arrival_cv == ARRIVAL_CV_DEFAULT,
            "workload.arrival_cv",
            f"is {self.arrival_cv}, read only by gamma arrivals; {self.arrivals} arrivals would ignore it",
            "add workload.arrivals=gamma for bursty arrivals, or drop workload.arrival_cv",
        )
        self.prompt_lengths.check("workload.prompt_lengths")
        self.output_lengths.check("workload.output_lengths")
        require(self.shared_prefix_tokens >= 0, "workload.shared_prefix_tokens", "is negative", "e.g. 0")
        require(
            self.turns >= 1,
            "workload.turns",
            f"is {self.turns}",
            "1 for single requests, > 1 for conversations",
        )
        require(self.turn_gap_seconds >= 0, "workload.turn_gap_seconds", "is negative", "seconds >= 0")
        # random.Random (measure/stream.py) seeds with the absolute value: -3 repeats seed 3's draws
        require(
            self.seed >= 0,
            "workload.seed",
            f"is {self.seed}: a seed must be >= 0 (Python's random seeds with its absolute value, so "
            f"it would repeat seed {abs(self.seed)}'s draws)",
            "e.g. workload.seed=0",
        )
        if not self.trace and self.turns == 1 and self.turn_gap_seconds != TURN_GAP_DEFAULT:
            # a warning, not a refusal: `workload=agent workload.turns=1` keeps the preset's gap,
            # and this level cannot tell a preset's value from one the user gave
            warn_unused_turn_gap(self.turn_gap_seconds)
        for name in ("warmup_requests", "drain_requests"):
            count = getattr(self, name)
            require(count >= 0, f"workload.{name}", f"is {count}: a count of requests must be >= 0", "e.g. 4")
        # a trace ignores `requests`: its own length is checked when it is read (measure/setup.py)
        require(
            bool(self.trace) or self.leaves_steady_state(self.requests),
            "workload.requests",
            f"{self.requests} requests leave no steady state after {self.warmup_requests} warm-up and "
            f"{self.drain_requests} drain requests",
            "raise workload.requests or lower the warm-up/drain counts",
        )

    @property
    def serving(self) -> bool:
        return self.kind == "serving"

    def _serving_fields_set(self) -> list[str]:
        """The serving-only fields that differ from their defaults."""
        changed = []
        for item in fields(self):
            default = item.default_factory() if item.default_factory is not MISSING else item.default
            if item.name in SERVING_FIELDS and getattr(self, item.name) != default:
                changed.append(item.name)
        return changed

    def leaves_steady_state(self, requests: int) -> bool:
        """Whether a stream of `requests` keeps some between its warm-up and its drain."""
        return self.warmup_requests + self.drain_requests < requests - 1

    def longest_request_tokens(self) -> int:
        """Prompt and output tokens of the longest request this workload can make: what an engine
        that reserves whole requests (continuous batching's paged cache) sizes each slot for. A
        conversation's last turn resends every earlier prompt and answer."""
        if not self.serving:
            return self.prompt_tokens + self.max_new_tokens
        first = self.shared_prefix_tokens + self.prompt_lengths.max  # the system prompt, then a message
        return first + (self.turns - 1) * self.prompt_lengths.max + self.turns * self.output_lengths.max

    def load_rates(self) -> list[float]:
        """The offered loads measured: `rates` (sorted, with `rate` in it), or `rate` alone."""
        return sorted({*self.rates, self.rate}) if self.rates else [self.rate]
