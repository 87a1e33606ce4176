"""What a recipe read from a file must hold: its keys (a hand edit's typo fails naming it), the
evidence verify compares with, the bounds of its `constraints`, its recorded build artifact, and
whether the one built here is that artifact."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from optimizer.config import QualityConfig, SloConfig, WorkloadConfig
from optimizer.errors import UserError

RECIPE_KEYS = (
    "schema",
    "wattsmith_version",
    "created",
    "model",
    "target",
    "settings",
    "layout",
    "artifact",
    "constraints",
    "measurement",
    "evidence",
)
MODEL_KEYS = ("name", "source", "format", "weight_sha256", "revision", "trust_remote_code", "num_parameters")
QUALITY_BOUND_KEYS = ("max_ppl_increase", "min_top1_agreement", "max_kl")


def check_known_keys(block: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """A hand edit with a misspelt key fails here, naming it, instead of being silently ignored."""
    unknown = sorted(str(k) for k in block if k not in known)
    if unknown:
        raise UserError(
            f"{where}.{unknown[0]}",
            "is not a field of a recipe",
            f"fix its spelling or remove it; fields: {', '.join(known)}",
        )


def constraints_of(
    constraints: Any, slo: SloConfig, quality: QualityConfig
) -> tuple[SloConfig, QualityConfig]:
    """The SLO and quality bound `constraints` states, over the ones the search measured with."""
    if not isinstance(constraints, dict):
        raise UserError("constraints", "is not a mapping", "restore it from git")
    check_known_keys(constraints, ("quality", "slo"), "constraints")
    bound, limits = constraints.get("quality", {}), constraints.get("slo", {})
    if not isinstance(bound, dict) or not isinstance(limits, dict):
        raise UserError("constraints", "quality and slo must be mappings", "restore it from git")
    check_known_keys(bound, QUALITY_BOUND_KEYS, "constraints.quality")
    try:
        tightened = replace(slo, **limits), replace(quality, **bound)
        WorkloadConfig(slo=tightened[0])  # validates the SLO as a workload does
    except TypeError as exc:  # an unknown SLO field
        raise UserError("constraints.slo", str(exc), "fix its spelling or remove it") from None
    except UserError as exc:  # named where the value was written, not where it is used
        field = exc.field.removeprefix("workload.")
        raise UserError(f"constraints.{field}", exc.problem, exc.fix) from None
    return tightened


# what verify compares with, by dotted path: found missing only after a re-measurement otherwise
_REQUIRED_FIELDS = (
    ("model.weight_sha256", str),
    ("evidence.energy.source", str),
    ("evidence.energy.goodput_tokens_per_joule.mean", (int, float)),
    ("evidence.latency.ttft_ms", dict),
    ("evidence.latency.tpot_ms", dict),
)


def check_evidence(data: dict[str, Any], path: Path) -> None:
    for dotted, kind in _REQUIRED_FIELDS:
        value: Any = data
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"recipe.{dotted}", f"{path}: is missing or malformed", "restore it from git")
    if "quality" not in data["evidence"]:
        raise UserError("recipe.evidence.quality", f"{path}: is missing", "restore it from git")


def check_artifact(artifact: Any, path: Path) -> None:
    """The recorded build artifact, when there is one: its kind and {file: sha256}."""
    if artifact is None:
        return
    if not isinstance(artifact, dict) or not isinstance(artifact.get("files"), dict):
        raise UserError("recipe.artifact", f"{path}: is not a mapping with `files`", "restore it from git")
    check_known_keys(artifact, ("what", "files"), "recipe.artifact")


def artifact_change(recorded: dict[str, Any] | None, built: dict[str, Any] | None) -> str | None:
    """How the artifact built here differs from the one a recipe measured (its `artifact`, as
    check_artifact let it through); None when it is the same, or when the recipe records none
    (its engine serves the model's own weights)."""
    if recorded is None:
        return None
    files, measured = (built or {}).get("files", {}), recorded["files"]
    if files == measured:
        return None
    differ = sorted(name for name in set(files) | set(measured) if files.get(name) != measured.get(name))
    listed = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return (
        f"the build artifact made here ({recorded.get('what') or 'unnamed'}) is not the one the recipe "
        f"measured, {listed} differing: another version of the package that builds it, or a builder "
        "that is not deterministic"
    )
