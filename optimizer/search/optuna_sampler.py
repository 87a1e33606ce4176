"""Optuna behind the Sampler protocol: TPE (goodput tokens/J up) or NSGA-II (tokens/J up, mean KL
down), with the quality bound, the SLO and validity as Optuna constraints.

Each axis of the space with more than one value is a categorical distribution. In a space of
several backends a backend's own settings are parameters of that backend (`torch-cb.page_size`),
asked for only once Optuna has chosen it (a conditional space): independent axes for every
backend's settings made nearly every proposal a mix of two backends, never measured, and the
search steered worse than a random order.

Optuna may propose a combination outside the valid set (a rule or the memory budget excludes
it): that proposal is never measured, and told to TPE as infeasible; NSGA-II is told it failed,
so that only candidates form its populations (see `_tell_invalid`). A proposal that repeats a
known candidate is dropped; after `max_proposals` such proposals in a row the sampler maps the
last one onto the nearest unevaluated valid candidate (fewest differing parameters), so a small
space is never stuck.

With a prior (the roofline bound), the first trials are the most promising candidate of each
numerics key instead of random ones: every quality probe happens early, and the analytically best
candidates are measured first.

The study is in memory, one per worker, rebuilt from the TrialStore through `observe`: the store,
not Optuna's storage, is the meeting point of workers (see store.py for why).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import Trial, TrialState, create_trial

from optimizer.config import QualityConfig, SearchConfig
from optimizer.results import FAILED, MEASURED, PRUNED, CandidateResult
from optimizer.space import LAYOUT_FIELDS, Candidate

INFEASIBLE_KL = 10.0  # nats: a quality loss for candidates that have none, far past any bound
Params = tuple[tuple[str, Any], ...]
# a candidate's axes that every backend has; the others are its backend's settings
SHARED_AXES = ("backend", "batch_size", "threads", *LAYOUT_FIELDS)
_ABSENT = object()  # a parameter another backend's candidate does not have


class OptunaSampler:
    def __init__(
        self,
        candidates: Sequence[Candidate],
        cfg: SearchConfig,
        bound: QualityConfig,
        prior: Callable[[Candidate], float] | None = None,
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._bound = bound
        self._max_proposals = cfg.optuna.max_proposals
        self._candidates = list(candidates)
        self._axes = _axes(self._candidates)
        self._conditional = len({c.backend for c in self._candidates}) > 1
        self._distributions: dict[str, CategoricalDistribution] = {
            name: CategoricalDistribution(choices)
            for name, choices in _axes([self._named(c) for c in self._candidates], fill=False).items()
        }
        self._asked: dict[str, list[str]] = {}  # each backend's parameters, in the distributions' order
        for candidate in self._candidates:
            asked = self._asked.setdefault(candidate.backend, [])
            asked.extend(name for name in self._params(candidate) if name not in asked)
        self._by_params = {self._key(self._params(c)): c for c in self._candidates}
        self._multi_objective = cfg.optuna.algorithm == "nsga2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler
            if self._multi_objective:
                sampler = optuna.samplers.NSGAIISampler(
                    population_size=cfg.optuna.population_size, seed=cfg.seed
                )
            else:
                sampler = optuna.samplers.TPESampler(
                    n_startup_trials=cfg.optuna.startup_trials,
                    multivariate=True,
                    group=self._conditional,  # each backend's parameters modelled together
                    constant_liar=True,  # other workers' candidates in flight count as poor
                    seed=cfg.seed,
                )
        directions = [StudyDirection.MAXIMIZE]
        if self._multi_objective:
            directions.append(StudyDirection.MINIMIZE)
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._pending: dict[str, Trial] = {}
        self._seen: set[str] = set()
        self._warm = (
            warm_start(self._candidates, prior, cfg.optuna.startup_trials)
            if prior is not None and cfg.optuna.warm_start
            else []
        )
        self.invalid_proposals = 0  # combinations outside the valid set, never measured
        self.mapped_proposals = 0  # suggestions mapped onto the nearest unevaluated candidate

    @property
    def axes(self) -> dict[str, list[Any]]:
        return dict(self._axes)

    def suggest(self) -> Candidate | None:
        if len(self._seen) + len(self._pending) >= len(self._candidates):
            return None
        while self._warm:
            first = self._warm.pop(0)
            if first.key() not in self._seen and first.key() not in self._pending:
                return self._enqueued(first)
        last: dict[str, Any] = {}
        for _ in range(self._max_proposals):
            trial = self._ask()
            last = trial.params
            candidate = self._by_params.get(self._key(trial.params))
            if candidate is None:
                self.invalid_proposals += 1
                self._tell_invalid(trial)
                continue
            if candidate.key() in self._seen or candidate.key() in self._pending:
                self.study.tell(trial, state=TrialState.FAIL)  # a repeat: nothing to learn from it
                continue
            self._pending[candidate.key()] = trial
            return candidate
        nearest = self._nearest_unevaluated(last)
        if nearest is None:
            return None
        self.mapped_proposals += 1
        return self._enqueued(nearest)

    def _enqueued(self, candidate: Candidate) -> Candidate:
        """Ask Optuna for exactly this candidate, as a trial it learns from like any other."""
        self._pending[candidate.key()] = self._ask_fixed(self._params(candidate))
        return candidate

    def observe(self, candidate: Candidate, result: CandidateResult) -> None:
        key = candidate.key()
        if key in self._seen:
            return
        self._seen.add(key)
        state, values, constraints = self._outcome(result)
        trial = self._pending.pop(key, None)
        if trial is not None:
            self._tell(trial, state, values, constraints)
            return
        params = self._params(candidate)
        if self._key(params) not in self._by_params:
            return  # not a candidate of this space
        if self._multi_objective:  # an added trial has no generation: NSGA-II would never see it
            self._tell(self._ask_fixed(params), state, values, constraints)
            return
        self.study.add_trial(
            create_trial(
                state=state,
                params=params,
                distributions={name: self._distributions[name] for name in params},
                values=values,
                constraints=constraints,
            )
        )

    def _ask_fixed(self, params: dict[str, Any]) -> Trial:
        """A trial of exactly these params. NSGA-II tags a trial's generation only when it samples a
        parameter, and builds its populations from tagged trials alone: a fixed trial is tagged
        here, in the order it is asked, as if sampled."""
        self.study.enqueue_trial(params)
        trial = self._ask()
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.NSGAIISampler):
            sampler.get_trial_generation(self.study, self.study.get_trials(deepcopy=False)[trial.number])
        return trial

    def _ask(self) -> Trial:
        """A trial with its backend chosen first, then that backend's parameters (define by run)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask()
            backend = self._candidates[0].backend
            if "backend" in self._distributions:
                backend = str(trial.suggest_categorical("backend", self._distributions["backend"].choices))
            for name in self._asked[backend]:
                trial.suggest_categorical(name, self._distributions[name].choices)
            return trial

    def _tell(
        self, trial: Trial, state: TrialState, values: list[float] | None, constraints: dict[str, float]
    ) -> None:
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        self.study.tell(trial, values, state=state)

    def _tell_invalid(self, trial: Trial) -> None:
        """NSGA-II counts every complete trial of a generation toward its population: invalid
        proposals told complete would fill generations, leaving few real parents (and a resumed
        search, whose store never holds them, would place its results in other generations). A
        failed trial is not counted: the next ask breeds again from the same parents."""
        if self._multi_objective:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        self._tell(trial, *self._infeasible())

    def _outcome(self, result: CandidateResult) -> tuple[TrialState, list[float] | None, dict[str, float]]:
        """Optuna's view of a result: feasible iff every constraint is <= 0."""
        if result.status == PRUNED:
            return TrialState.PRUNED, None, {}  # shown analytically not to win: never measured
        if result.status == FAILED:
            return self._infeasible()
        quality_violation = _quality_violation(result, self._bound)
        slo_violation = 1.0  # rejected: not measured, the SLO is unknown
        if result.status == MEASURED and result.performance is not None:
            perf = result.performance
            slo_violation = 0.0 if perf.slo_met else 1.0 - perf.goodput_fraction + 1e-3
        kl = _finite(result.quality.mean_kl, INFEASIBLE_KL) if result.quality is not None else INFEASIBLE_KL
        values = [result.objective, kl] if self._multi_objective else [result.objective]
        return TrialState.COMPLETE, values, {"valid": 0.0, "quality": quality_violation, "slo": slo_violation}

    def _infeasible(self) -> tuple[TrialState, list[float], dict[str, float]]:
        """Invalid or failed: worse than any measured candidate, whatever it measured."""
        values = [0.0, INFEASIBLE_KL] if self._multi_objective else [0.0]
        return TrialState.COMPLETE, values, {"valid": 1.0, "quality": 1.0, "slo": 1.0}

    def _named(self, candidate: Candidate) -> dict[str, Any]:
        """Every axis of the candidate under its parameter's name: a backend's own setting is
        `backend.setting` in a space of several backends."""
        shared = not self._conditional
        return {
            name if shared or name in SHARED_AXES else f"{candidate.backend}.{name}": value
            for name, value in candidate.axes().items()
        }

    def _params(self, candidate: Candidate) -> dict[str, Any]:
        """The parameters Optuna knows the candidate by: its axes that vary, in one order."""
        named = self._named(candidate)
        return {name: named[name] for name in self._distributions if name in named}

    def _key(self, params: dict[str, Any]) -> Params:
        return tuple((name, params[name]) for name in self._distributions if name in params)

    def _nearest_unevaluated(self, params: dict[str, Any]) -> Candidate | None:
        open_ = [c for c in self._candidates if c.key() not in self._seen and c.key() not in self._pending]
        if not open_:
            return None

        def distance(candidate: Candidate) -> int:
            values = self._params(candidate)
            return sum(values.get(name, _ABSENT) != params.get(name, _ABSENT) for name in self._distributions)

        return min(open_, key=distance)  # ties: the space's order


def warm_start(
    candidates: Sequence[Candidate], prior: Callable[[Candidate], float], count: int
) -> list[Candidate]:
    """The highest-prior candidate of each numerics key, best first, at most `count`."""
    best: dict[str, Candidate] = {}
    for candidate in sorted(candidates, key=prior, reverse=True):
        best.setdefault(candidate.numerics_key(), candidate)
    return list(best.values())[:count]


def _axes(candidates: Sequence[Candidate | dict[str, Any]], fill: bool = True) -> dict[str, list[Any]]:
    """Each setting that varies among the candidates (or their parameters), with its values in a
    stable order. A setting some backends lack (continuous batching's page size beside static
    batching) takes None for their candidates with `fill` (the sampler's `axes`); without it, only
    the candidates that have it count (an Optuna parameter of their backend)."""
    settings = [c.axes() if isinstance(c, Candidate) else c for c in candidates]
    names = list(dict.fromkeys(name for axes in settings for name in axes))
    values: dict[str, list[Any]] = {name: [] for name in names}
    for axes in settings:
        for name, column in values.items():
            if (fill or name in axes) and (value := axes.get(name)) not in column:
                column.append(value)
    return {
        name: sorted(column, key=lambda v: (str(type(v)), v))
        for name, column in values.items()
        if len(column) > 1
    }


def _quality_violation(result: CandidateResult, bound: QualityConfig) -> float:
    """The largest relative excess over the quality bound's limits (<= 0 inside the bound)."""
    quality = result.quality
    if quality is None:
        return 1.0
    excesses = [
        (quality.ppl_increase - bound.max_ppl_increase) / max(bound.max_ppl_increase, 1e-6),
        (bound.min_top1_agreement - quality.top1_agreement) / max(bound.min_top1_agreement, 1e-6),
        (quality.mean_kl - bound.max_kl) / max(bound.max_kl, 1e-6),
    ]
    if not all(math.isfinite(x) for x in excesses):
        return 1.0  # NaN metrics (an overflowing kernel) break the bound
    return max(excesses)


def _finite(value: float, default: float) -> float:
    """Optuna refuses NaN values and constraints."""
    return value if math.isfinite(value) else default
