"""Schema of conf/search/: how candidates are drawn and how much measuring time a search spends."""

from __future__ import annotations

from dataclasses import dataclass, field

from optimizer.config.checks import require, require_finite, require_subset

SAMPLERS = ("grid", "random", "optuna", "bound", "auto")
OPTUNA_ALGORITHMS = ("tpe", "nsga2")


@dataclass
class OptunaConfig:
    """Optuna samplers (search.sampler=optuna).

    `tpe`: one objective, goodput tokens/J up. `nsga2`: two, goodput tokens/J up and quality loss
    (mean KL) down. Both get the quality bound and the SLO as constraints.
    """

    algorithm: str = "tpe"
    startup_trials: int = 4  # trials before TPE's model steers (warm-start ones, then random)
    # Start from the candidate with the highest roofline bound of each numerics (up to
    # startup_trials): each quality probe early, the analytically most promising first.
    warm_start: bool = True
    population_size: int = 8  # NSGA-II: trials per generation
    # proposals per suggestion before the sampler takes the nearest unevaluated valid candidate
    # (on a small space the model keeps proposing points it has already seen)
    max_proposals: int = 16

    def __post_init__(self) -> None:
        require_subset([self.algorithm], OPTUNA_ALGORITHMS, "search.optuna.algorithm")
        require(self.startup_trials >= 1, "search.optuna.startup_trials", "must be >= 1", "e.g. 4")
        require(self.population_size >= 2, "search.optuna.population_size", "must be >= 2", "e.g. 8")
        require(self.max_proposals >= 1, "search.optuna.max_proposals", "must be >= 1", "e.g. 16")


@dataclass
class SearchConfig:
    """How candidates are drawn, how much measuring time the search may spend, and by how many
    workers (each with a whole device while it measures)."""

    sampler: str = "grid"
    budget_minutes: float = 20.0
    max_candidates: int | None = None  # new evaluations in this run, all workers together;
    # a rejection by quality already known (a batch variant of rejected numerics) costs nothing
    seed: int = 0
    retry_failed: bool = False
    # Checked between batches: a candidate past it fails once its batch returns. One still running
    # at twice it (at least 5 minutes past it: search/watchdog.py) hung in a call that never returns
    # (native code): it is recorded failed and its process ends (exit code 4); rerun to resume.
    candidate_timeout_minutes: float = 15.0
    workers: int = 1
    # A worker holds a lease on the candidate it evaluates, renewed while it lives; a killed
    # worker's lease lapses after this long (at once when it ran on the same host).
    lease_seconds: float = 120.0
    # Drop candidates whose analytic tokens/J upper bound is below the best measured so far.
    roofline: bool = True
    # CPU targets without preset rates: measured copy bandwidth and matmul rate times this factor
    # stand in for the peaks (an assumption, printed in the report).
    roofline_headroom: float = 2.0
    # Noise-aware selection: the best `finalists` feasible candidates are re-measured side by side
    # in `finalist_rounds` interleaved rounds and selected on those figures with an interval (0 or
    # 1: the search's best as measured); among those tied on energy (a mean inside the winner's
    # interval), the most latency headroom wins. A winner whose latency is within `slo_margin` of the SLO is flagged at its edge.
    # A candidate that missed the SLO in the search by at most `near_miss` (its latency percentile
    # up to 1 + near_miss times the target) with more goodput tokens/J than the best feasible one
    # is a finalist too: a percentile over a few dozen requests moves by more than that from run
    # to run, and one run's miss would otherwise decide against it (null: feasible ones only).
    # Stop once this many feasible candidates in a row were measured without beating the best so
    # far (null: search until the budget or the space runs out). With best-bound-first order the
    # candidates that can still win come first, so a run of losers means the rest lose too; an
    # infeasible one (a large batch over the SLO) says nothing of those after it and is not counted.
    patience: int | None = None
    # Not a setting (Hydra never sees it): whether the user chose `patience` (search.patience=..
    # or a search preset of their choice), not the default preset: only a chosen patience that
    # stops nothing here (a grid) is worth a note (search/samplers.py patience_note).
    patience_chosen: bool = field(default=True, compare=False, metadata={"omegaconf_ignore": True})
    # Multi-fidelity: a candidate whose first windows' goodput tokens/J is below the best so far
    # divided by (1 + screen_margin) gets no further windows (null: every candidate gets all).
    screen_margin: float | None = 0.25
    finalists: int = 3
    finalist_rounds: int = 2
    slo_margin: float = 0.1
    near_miss: float | None = 0.25
    optuna: OptunaConfig = field(default_factory=OptunaConfig)

    def __post_init__(self) -> None:
        require_finite(self, "search")
        require_subset([self.sampler], SAMPLERS, "search.sampler")
        require(
            self.candidate_timeout_minutes > 0, "search.candidate_timeout_minutes", "must be > 0", "e.g. 15"
        )
        require(self.budget_minutes > 0, "search.budget_minutes", "must be > 0", "e.g. 20")
        if self.max_candidates is not None:
            require(
                self.max_candidates >= 1,
                "search.max_candidates",
                "must be >= 1",
                "e.g. 20, or null for no cap",
            )
        # numpy's generators (optuna's samplers) take only unsigned 32-bit seeds
        require(0 <= self.seed < 2**32, "search.seed", f"is {self.seed}, outside [0, 2**32)", "e.g. 0")
        require(self.workers >= 1, "search.workers", "must be >= 1", "one worker per device, e.g. 1")
        if self.screen_margin is not None:
            require(self.screen_margin >= 0, "search.screen_margin", "must be >= 0", "e.g. 0.25, or null")
        if self.patience is not None:
            require(self.patience >= 1, "search.patience", "must be >= 1", "e.g. 12, or null")
        require(
            self.finalists >= 0, "search.finalists", "must be >= 0", "e.g. 3, or 0 to keep the search's best"
        )
        require(self.finalist_rounds >= 1, "search.finalist_rounds", "must be >= 1", "e.g. 2")
        require(0 <= self.slo_margin < 1, "search.slo_margin", "must be in [0, 1)", "e.g. 0.1")
        if self.near_miss is not None:
            require(self.near_miss >= 0, "search.near_miss", "must be >= 0", "e.g. 0.25, or null")
        require(self.lease_seconds >= 10, "search.lease_seconds", "must be >= 10", "e.g. 120")
        require(
            self.roofline_headroom >= 1,
            "search.roofline_headroom",
            f"is {self.roofline_headroom} < 1: the bound would no longer be an upper bound",
            "use >= 1, e.g. 2",
        )
