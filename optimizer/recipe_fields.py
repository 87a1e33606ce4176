"""The configs a recipe's fields are read into (what its evidence was measured with), and the
arguments load_recipe is given: a hand edit that fails names its field and what the field needs,
never the generic 'malformed field' with a Python exception's text."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any, get_type_hints

from optimizer.config import (
    ENERGY_SOURCES,
    LengthConfig,
    QualityConfig,
    SloConfig,
    TargetConfig,
    WorkloadConfig,
)
from optimizer.errors import UserError
from optimizer.measure.energy import estimate_coefficients
from optimizer.measure.workload import label_sources, source_label
from optimizer.recipe_checks import check_known_keys, check_types

_RESTORE = "restore it from git"


def measured_configs(measurement: dict[str, Any]) -> tuple[WorkloadConfig, QualityConfig]:
    """The workload and quality config a recipe's evidence was measured with; an error names its
    key under `measurement` (where it was written), not the run config's `workload.`/`quality.`.
    A key missing from an older recipe is the config's default; the SLO never is (the evidence
    was judged against the recorded one, not today's default)."""
    if not isinstance(measurement.get("workload"), dict) or not isinstance(measurement.get("quality"), dict):
        raise UserError("measurement", "workload and quality must be mappings", _RESTORE)
    workload = dict(measurement["workload"])
    try:
        _check_keys(workload, WorkloadConfig, "workload")
        _check_keys(measurement["quality"], QualityConfig, "quality")
        check_types(workload, WorkloadConfig, "workload")
        check_types(measurement["quality"], QualityConfig, "quality")
        slo = workload.get("slo")
        if not isinstance(slo, dict):
            raise _not_a(
                "workload.slo",
                slo,
                "a mapping",
                f"the SLO the recipe was measured with, a mapping of {', '.join(_keys(SloConfig))}",
            )
        workload["slo"] = SloConfig(**slo)
        for lengths in ("prompt_lengths", "output_lengths"):
            value = workload.get(lengths)
            if value is not None and not isinstance(value, dict):
                raise _not_a(
                    f"workload.{lengths}",
                    value,
                    "a mapping",
                    f"a mapping of {', '.join(_keys(LengthConfig))}",
                )
            if value is not None:
                workload[lengths] = LengthConfig(**value)
        return WorkloadConfig(**workload), QualityConfig(**measurement["quality"])
    except UserError as exc:
        raise UserError(f"measurement.{exc.field}", exc.problem, exc.fix) from None


def _not_a(field: str, value: object, kind: str, fix: str) -> UserError:
    """A recorded field missing (where it is required) or not `kind`: restoring the recipe is the fix."""
    problem = "is missing" if value is None else f"is {value!r}, not {kind}"
    return UserError(field, problem, f"{fix}; {_RESTORE}")


def _check_keys(values: dict[str, Any], config: type, where: str) -> None:
    """A misspelt key fails naming it (a config's constructor said 'unexpected keyword argument'),
    in the nested configs too (the SLO, the stream's lengths)."""
    check_known_keys(values, _keys(config), where)
    for name, hint in get_type_hints(config).items():
        if isinstance(hint, type) and is_dataclass(hint) and isinstance(values.get(name), dict):
            _check_keys(values[name], hint, f"{where}.{name}")


def _keys(config: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(config))


def recorded_sources(energy: dict[str, Any]) -> tuple[str, ...]:
    """Every energy source a recipe's windows used: `evidence.energy.sources`, or for a recipe
    written before it was recorded, those its `source` label names (one, in such a recipe)."""
    label = str(energy["source"])
    sources = energy.get("sources")
    if sources is None:
        return label_sources(label)
    if (
        not isinstance(sources, list)
        or not all(isinstance(s, str) for s in sources)
        or not sources
        or source_label(sources) != label
    ):
        raise UserError(
            "evidence.energy.sources",
            f"is {sources!r}",
            f"the list of the sources `evidence.energy.source` ({label}) names; {_RESTORE}",
        )
    return label_sources(label)


def target_of(
    recorded_target: dict[str, Any], measurement: dict[str, Any], energy: dict[str, Any]
) -> TargetConfig:
    """The target kind, the energy source and the estimate's coefficients a recipe was measured
    with (the default coefficients for a recipe written before they were recorded). The source is
    asked for by name: an estimated recipe re-checked on a host with RAPL is estimated again; a
    mix of sources (a meter that fell back mid-run) is re-measured by the meter found here."""
    kind = recorded_target.get("kind")
    if not isinstance(kind, str):
        raise _not_a("target.kind", kind, "a name", "the device kind the recipe was measured on: cpu or cuda")
    sources = recorded_sources(energy)
    source = sources[0] if len(sources) == 1 and sources[0] in ENERGY_SOURCES else "auto"
    target = TargetConfig(kind=kind, energy_source=source)
    recorded = measurement.get("energy_estimate")
    if recorded is None:
        return target
    where = "measurement.energy_estimate"
    if not isinstance(recorded, dict) or set(recorded) != set(estimate_coefficients(target)):
        raise UserError(
            where,
            f"is {recorded!r}",
            f"a mapping of cpu_active_watts_per_core and cpu_idle_watts_per_core; {_RESTORE}",
        )
    check_types(recorded, TargetConfig, where)  # a quoted "5.0" or a bool is no number of watts
    try:
        return replace(
            target,
            cpu_active_watts_per_core=float(recorded["cpu_active_watts_per_core"]),
            cpu_idle_watts_per_core=float(recorded["cpu_idle_watts_per_core"]),
        )
    except UserError as exc:  # TargetConfig names target.<key>: the recipe's is under energy_estimate
        raise UserError(f"{where}.{exc.field.rpartition('.')[2]}", exc.problem, exc.fix) from None


def check_request_tokens(request_tokens: object) -> None:
    """load_recipe's `request_tokens`, checked before anything is built: a count <= 0 or a fraction
    was sized as the engine's smallest slot without a word, a string failed inside reserve()."""
    if request_tokens is None or (type(request_tokens) is int and request_tokens >= 1):
        return
    raise UserError(
        "request_tokens",
        f"is {request_tokens!r}, not a count of tokens",
        "a whole number > 0 (the longest request's prompt and output tokens), or None for the "
        "longest request the recipe was measured with",
    )
