"""What a recipe read from a file must hold: its keys (a hand edit's typo fails naming it), the
evidence and prompts verify compares with, the configs it was measured with, the bounds of its
`constraints`, its recorded build artifact, whether the one built here is that artifact, and where
its recorded input files (the model's weights among them) are here."""

from __future__ import annotations

import math
import re
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from optimizer.backends.registry import SPECS_BY_NAME
from optimizer.config import ModelConfig, QualityConfig, SloConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.version import tool_version

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
# the blocks' keys as build_recipe writes them (TargetSpec.fingerprint for `target`). Open below
# them: target.packages and target.gpu (whatever is tracked and detected), the evidence's parts
# (records for the reader; what verify needs of them check_evidence requires)
BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "model": MODEL_KEYS,  # a misspelt revision is `main`
    "target": ("kind", "name", "cpu_model", "cores", "memory_gib", "gpu", "python", "platform", "packages"),
    # a misspelt energy_estimate would re-estimate with the default coefficients
    "measurement": (
        "workload",
        "quality",
        "quality_text_sha256",
        "prompt_pool",
        "prompt_tokens_sha256",
        "longest_request_tokens",
        "idle_watts",
        "protocol_version",
        "energy_estimate",
    ),
    "evidence": (
        "energy",
        "throughput",
        "latency",
        "quality",
        "serving",
        "selection",
        "baseline",
        "gain_vs_baseline",
        "search",
    ),
}
_Bounds = TypeVar("_Bounds", SloConfig, QualityConfig)
# the keys `constraints` may set, each with the example its fix gives
QUALITY_BOUND_EXAMPLES: dict[str, float] = {
    "max_ppl_increase": 0.03,
    "min_top1_agreement": 0.95,
    "max_kl": 0.05,
}
SLO_EXAMPLES: dict[str, float] = {"percentile": 90, "ttft_ms": 2000, "tpot_ms": 250}  # every SloConfig field
# the bounds a larger value tightens; the others a smaller one does (any number, where the search set none)
AT_LEAST = ("min_top1_agreement", "percentile")


def check_known_keys(block: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """A hand edit with a misspelt key fails here, naming it, instead of being silently ignored."""
    unknown = sorted(str(k) for k in block if k not in known)
    if unknown:
        raise UserError(
            f"{where}.{unknown[0]}",
            "is not a field of a recipe",
            f"fix its spelling or remove it; fields: {', '.join(known)}",
        )


def newer_writer(data: dict[str, Any]) -> str | None:
    """Said where a recipe that does not read was written by a newer wattsmith than this one: its
    schema, keys, settings or backend may be ones this version does not know yet."""
    written, here = _release(data.get("wattsmith_version")), _release(tool_version())
    if written is None or here is None or written <= here:
        return None
    return f"written by wattsmith {data['wattsmith_version']}, newer than this {tool_version()}"


def _release(version: object) -> tuple[int, ...] | None:
    """A version's leading release numbers (0.10.1rc1: (0, 10, 1)); None for no version, or an
    installation that does not know its own (0+unknown)."""
    found = re.match(r"\d+(\.\d+)*", version) if isinstance(version, str) else None
    if found is None or "+unknown" in str(version):
        return None
    return tuple(int(part) for part in found.group().split("."))


def model_config_of(model: dict[str, Any]) -> ModelConfig:
    """The recipe's model block as a config. Checked, not coerced: bool("false") is True, and a
    quoted `false` would run the repository's own code; YAML reads an all-digit revision as a number."""
    source, revision, remote = model.get("source"), model.get("revision"), model.get("trust_remote_code")
    if not isinstance(source, str) or not source.strip():
        problem = "is missing" if source is None else f"is {source!r}"
        raise UserError("model.source", problem, "the path, packaged name or hub id of the weights")
    if revision is not None and not isinstance(revision, str):
        raise UserError(
            "model.revision", f"is {revision!r}, not a string", "quote it, e.g. revision: '0123abc'"
        )
    if remote is not None and not isinstance(remote, bool):
        raise UserError(
            "model.trust_remote_code", f"is {remote!r}, not true or false", "true or false, unquoted"
        )
    return ModelConfig(source=source, revision=revision, trust_remote_code=bool(remote))


def constraints_of(
    constraints: Any, slo: SloConfig, quality: QualityConfig
) -> tuple[SloConfig, QualityConfig]:
    """The SLO and quality bound `constraints` states, over the ones the search measured with; each
    at most as loose as the search's (README: tighten only), or verify would pass what it rejected."""
    if not isinstance(constraints, dict):
        raise UserError("constraints", "is not a mapping", "restore it from git")
    check_known_keys(constraints, ("quality", "slo"), "constraints")
    bound, limits = constraints.get("quality", {}), constraints.get("slo", {})
    if not isinstance(bound, dict) or not isinstance(limits, dict):
        raise UserError("constraints", "quality and slo must be mappings", "restore it from git")
    tightened = _bounded(slo, limits, SLO_EXAMPLES, "slo")
    return tightened, _bounded(quality, bound, QUALITY_BOUND_EXAMPLES, "quality")


def _bounded(config: _Bounds, edits: dict[str, Any], examples: dict[str, float], part: str) -> _Bounds:
    """`config` with the keys of `constraints.<part>`, each named by its own key when wrong."""
    where = f"constraints.{part}"
    check_known_keys(edits, tuple(examples), where)
    for key, value in edits.items():  # a null latency limit is no limit; the percentile is needed
        _require_number(
            value, f"{where}.{key}", examples[key], nullable=part == "slo" and key != "percentile"
        )
        _require_no_looser(getattr(config, key), value, f"{where}.{key}")
    try:
        return replace(config, **edits)
    except UserError as exc:  # named where the value was written, not where it is used
        raise UserError(f"constraints.{exc.field.removeprefix('workload.')}", exc.problem, exc.fix) from None


def _require_no_looser(searched: float | None, value: float | None, field: str) -> None:
    """`value` (a checked number, or null for no limit) as tight as the search's bound or tighter."""
    at_least = field.rpartition(".")[2] in AT_LEAST
    if searched is None or (value is not None and (value >= searched if at_least else value <= searched)):
        return
    raise UserError(
        field,
        f"is {'null (no limit)' if value is None else repr(value)}, looser than the search's {searched!r}",
        f"constraints can only tighten the search's bounds: {'at least' if at_least else 'at most'} "
        f"{searched:g}, or remove the key",
    )


def _require_number(value: Any, field: str, example: float, nullable: bool) -> None:
    """YAML reads `0.05` as a number but `"0.05"`, `95%` or `yes` as a string or a bool: refused
    here, naming the key, before a comparison with the bound fails somewhere else."""
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fix = f"a number, e.g. {example}" + (", or null for no limit" if nullable else "")
        raise UserError(field, f"is {value!r}, not a number", fix)


def checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The recipe's settings, each of its backend's type (an unknown backend is from_dict's to name)."""
    spec = SPECS_BY_NAME.get(str(settings.get("backend")))
    if spec is not None:
        check_types(settings, spec.settings_type, "settings")
    return settings


def check_types(values: dict[str, Any], config: type, where: str) -> None:
    """A hand edit's quoted number ("5"), bool or fraction for a count fails here naming its key,
    not later in a comparison that names nothing. Numbers are checked (nested configs too); a
    string or bool field is left to its config's own checks of the values it allows."""
    hints = get_type_hints(config)
    for known in fields(config):
        if known.name not in values:
            continue
        value, hint, field = values[known.name], hints[known.name], f"{where}.{known.name}"
        if isinstance(hint, type) and is_dataclass(hint) and isinstance(value, dict):
            check_types(value, hint, field)
            continue
        kind = _number_kind(hint)
        if kind is None or _fits(value, hint):
            continue
        given = _unquoted(value)
        default = known.default_factory() if known.default_factory is not MISSING else known.default
        example = given if _fits(given, hint) else default
        shown = f"e.g. {known.name}: {example}" if example is not MISSING else "restore it from git"
        raise UserError(field, f"is {value!r}, not {kind}", f"{kind}, unquoted: {shown}")


def _number_kind(hint: Any) -> str | None:
    """How the type a numeric field needs is said; None for a field that holds no number."""
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    if get_origin(hint) is list:
        return "a list of numbers" if args and _number_kind(args[0]) else None
    if get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
        inner = _number_kind(args[0])
        return inner and f"{inner} or null"
    return {int: "an integer", float: "a number"}.get(hint)


def _fits(value: Any, hint: Any) -> bool:
    if isinstance(value, bool):  # an int to Python, never a count or a number in a recipe
        return False
    if get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(item, get_args(hint)[0]) for item in value)
    if get_origin(hint) in (Union, types.UnionType):
        return any(value is None if arg is type(None) else _fits(value, arg) for arg in get_args(hint))
    return type(value) is int if hint is int else isinstance(value, (int, float))


def _unquoted(value: Any) -> Any:
    """`value` with its quoted numbers as numbers: the fix shows what was meant, when it can."""
    if isinstance(value, list):
        return [_unquoted(item) for item in value]
    if isinstance(value, str):
        for parse in (int, float):
            try:
                number = parse(value)
            except ValueError:
                continue
            return number if math.isfinite(number) else value  # "nan" unquoted is still no number
    return value


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
    _check_prompts(data["measurement"], path)
    _check_longest_request(data["measurement"], path)


def _check_prompts(measurement: dict[str, Any], path: Path) -> None:
    """The prompt pool verify tokenizes and the hash it compares, when recorded (a recipe from
    before they were has neither: verify sizes the pool as it did then)."""
    pool, sha = measurement.get("prompt_pool"), measurement.get("prompt_tokens_sha256")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise UserError(
            "recipe.measurement.prompt_pool",
            f"{path}: is {pool!r}",
            "a count of prompts; restore it from git",
        )
    if sha is not None and not isinstance(sha, str):
        raise UserError(
            "recipe.measurement.prompt_tokens_sha256", f"{path}: is {sha!r}", "restore it from git"
        )


def _check_longest_request(measurement: dict[str, Any], path: Path) -> None:
    """What load_recipe sizes a serving engine for (null in older and offline recipes): a string
    was ignored for the workload's bound, a negative count passed to the engine's reserve()."""
    longest = measurement.get("longest_request_tokens")
    if longest is not None and (type(longest) is not int or longest < 1):
        raise UserError(
            "recipe.measurement.longest_request_tokens",
            f"{path}: is {longest!r}, not a count of tokens",
            "a whole number > 0, unquoted, or null to size for the workload's bound; restore it from git",
        )


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


def inputs_here(
    recipe: Path, workload: WorkloadConfig, quality: QualityConfig
) -> tuple[WorkloadConfig, QualityConfig]:
    """The configs with the trace and quality text the recipe records found on this machine. A
    path is recorded as optimize was given it: a relative one is looked up next to the recipe
    first (a recipe checked into a model's repository with its inputs), then in the current
    directory (where optimize ran: its recipe is in outputs/<run>/). Any copy will do: verify
    compares their hashes with the recorded ones."""
    trace = workload.trace and _found(workload.trace, recipe, "measurement.workload.trace", "trace")
    text = quality.text
    if text != "wiki":  # the packaged text, not a path
        text = _found(text, recipe, "measurement.quality.text", "quality text")
    return replace(workload, trace=trace), replace(quality, text=text)


def _found(recorded: str, recipe: Path, field: str, what: str) -> str:
    given = Path(recorded).expanduser()
    places = [given] if given.is_absolute() else [recipe.parent.absolute() / given, Path.cwd() / given]
    found = next((place for place in places if place.is_file()), None)
    if found is not None:
        return str(found)
    copy = f"the {what} the recipe was measured with (a copy will do: its hash is compared)"
    edit = f"set the recipe's {field} to where it is"
    if given.is_absolute():
        raise UserError(f"recipe.{field}", f"{recorded} does not exist", f"put {copy} there, or {edit}")
    raise UserError(
        f"recipe.{field}",
        f"{recorded} is neither next to the recipe ({places[0]}) nor in the current directory ({places[1]})",
        f"put {copy} at {places[0]}, run verify in the directory optimize ran in, or {edit}",
    )


def source_here(recorded: str, recipe: Path) -> str:
    """The recorded model source as found here. optimize records a path as it was given, relative
    to where it ran: that directory may be the current one (the recipe in its outputs/<run>/), or
    the repository the recipe was committed into (README: recipes/<model>/recipe.yaml beside
    ./weights), so a relative path is looked up from the current directory, then from the recipe's
    directory and each above it. Anything else (a packaged name, a hub id, a path found nowhere)
    is left for resolve_model; check_weights catches weights that are not the recorded ones."""
    from optimizer.model import PACKAGED_MODELS

    given = Path(recorded.strip()).expanduser()
    if recorded.strip() in PACKAGED_MODELS or given.is_absolute() or given.exists():
        return recorded
    folder = recipe.absolute().parent
    found = next((place / given for place in (folder, *folder.parents) if (place / given).exists()), None)
    return recorded if found is None else str(found)


@contextmanager
def trace_errors_name_the_recipe() -> Iterator[None]:
    """A trace's errors in verify's terms (read_trace names `workload.trace`, a line of it and a
    field): the trace is the recipe's, so is the field to fix, as `inputs_here` names a missing one."""
    try:
        yield
    except UserError as error:
        if error.field != "workload.trace" and not error.field.startswith("workload.trace "):
            raise
        raise UserError(f"recipe.measurement.{error.field}", error.problem, error.fix) from None
