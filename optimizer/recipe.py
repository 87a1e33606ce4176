"""The recipe: a versioned YAML of the selected deployment settings plus the measured evidence.

It is meant to be checked into the model's repository. `load_recipe` builds the engine exactly as
it says; `verify_recipe` re-measures here and compares with the evidence.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from optimizer.config import (
    ModelConfig,
    QualityConfig,
    RunConfig,
    TargetConfig,
    WorkloadConfig,
    cache_dir_from,
)
from optimizer.errors import UserError
from optimizer.files import tensor_sha256, write_atomically
from optimizer.measure import PROTOCOL_VERSION
from optimizer.measure.energy import estimate_coefficients
from optimizer.measure.setup import MeasurementSetup
from optimizer.measure.workload import ServingSummary
from optimizer.recipe_checks import (
    BLOCK_KEYS,
    RECIPE_KEYS,
    check_artifact,
    check_evidence,
    check_known_keys,
    checked_settings,
    constraints_of,
    model_config_of,
    newer_writer,
    source_here,
)
from optimizer.recipe_fields import check_request_tokens, measured_configs, target_of
from optimizer.recipe_load import (
    build_here,
    model_errors_name,
    refuse_excluded_here,
    refuse_source_nowhere,
    target_here,
)
from optimizer.results import CandidateResult, sig3_decimals
from optimizer.select import Selection
from optimizer.space import Candidate, layout_record
from optimizer.target import TargetSpec
from optimizer.version import tool_version

if TYPE_CHECKING:
    from optimizer.backends.base import Engine
    from optimizer.search.runner import SearchOutcome

RECIPE_SCHEMA = "wattsmith.recipe/v1"
SUPPORTED_SCHEMAS = (RECIPE_SCHEMA,)


def _evidence_of(result: CandidateResult) -> dict[str, Any]:
    perf = result.performance
    assert perf is not None
    return {
        "energy": {
            "source": perf.source,  # every source's label (`a+b`: windows of a meter that fell back)
            "sources": list(perf.sources),
            "is_estimate": perf.is_estimate,  # an estimate mixed with a measurement is no measurement
            "idle_watts": _kept(perf.idle_watts, 3),
            "windows": len(perf.windows),  # a finalist's: every round it was selected on
            "window_seconds": [round(w.seconds, 3) for w in perf.windows],
            "window_joules": [_kept(w.joules, 3) for w in perf.windows],
            # the cores' speed before each window (measure/speed.py): verify compares its own
            "window_cpu_probe_mibps": [
                round(w.cpu_probe_mibps, 1) for w in perf.windows if w.cpu_probe_mibps
            ],
            "goodput_tokens_per_joule": _rounded(asdict(perf.goodput_tokens_per_joule)),
            "tokens_per_joule": _rounded(asdict(perf.tokens_per_joule)),
            "active_tokens_per_joule": _rounded(asdict(perf.active_tokens_per_joule)),
            "watts": _rounded(asdict(perf.watts)),
        },
        "throughput": {"tokens_per_second": _rounded(asdict(perf.tokens_per_second))},
        "latency": {
            "requests": perf.latency.requests,
            "ttft_ms": _rounded(perf.latency.ttft_ms),
            "tpot_ms": _rounded(perf.latency.tpot_ms),
            "goodput_fraction": round(perf.goodput_fraction, 4),
        },
        "quality": _rounded(result.quality.to_dict()) if result.quality else None,
        "serving": _serving_evidence(perf.serving) if perf.serving else None,
    }


def _serving_evidence(serving: ServingSummary) -> dict[str, Any]:
    """The stream the recipe was selected on (replayed by `optimize verify`) and how it was served."""
    return {
        "stream": serving.stream,
        "stream_sha256": serving.stream_sha256,
        "rate": serving.rate,
        "requests_judged": serving.window_requests,
        "met_slo_fraction": round(serving.met_slo_fraction, 4),
        "joules_per_request": None
        if serving.joules_per_request is None
        else _kept(serving.joules_per_request, 4),
        "ttft_p90_ms": round(serving.ttft_p90_ms, 1),
        "e2e_p90_ms": round(serving.e2e_p90_ms, 1),
        "idle_fraction": round(serving.idle_fraction, 4),
        "capacity_rate": serving.capacity_rate,
        "load_curve": [_rounded(point) for point in serving.curve],
        "prefix": _rounded(serving.prefix),
    }


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _kept(v, 6) if isinstance(v, float) else v for k, v in values.items()}


def _kept(value: float, decimals: int) -> float:
    """To `decimals` or, where more, five significant digits: a CPU's 0.00012 tok/J is no 0.0001."""
    return round(value, max(decimals, sig3_decimals(value) + 2))


def build_recipe(
    cfg: RunConfig,
    setup: MeasurementSetup,
    best: CandidateResult,
    outcome: SearchOutcome,
    excluded: list[tuple[Candidate, str]],
    context: str,
    idle_watts: float,
    selection: Selection | None = None,
) -> dict[str, Any]:
    base = outcome.baseline
    evidence = _evidence_of(best)
    if selection is not None:  # the figures above are a re-measurement; how the winner was chosen
        evidence["selection"] = _selection_evidence(selection)
        # percentiles do not pool: a finalist's latency and stream figures are its last round's
        evidence["energy"]["from"] = "every finalist round"
        for part in ("latency", "serving"):
            if evidence[part] is not None:
                evidence[part]["from"] = "the last finalist round"
    if base.performance is not None:
        evidence["baseline"] = {"settings": base.candidate.to_dict(), **_evidence_of(base)}
        evidence["gain_vs_baseline"] = {
            "goodput_tokens_per_joule": _ratio(best.objective, base.objective),
            "tokens_per_joule": _ratio(
                best.performance.tokens_per_joule.mean if best.performance else 0.0,
                base.performance.tokens_per_joule.mean,
            ),
        }
    counts: dict[str, int] = {}
    for r in outcome.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    evidence["search"] = {
        **counts,
        "excluded_by_rules": len(excluded),
        "not_reached": len(outcome.not_reached),
        "measuring_seconds": round(outcome.measuring_seconds, 1),
        "sampler": cfg.search.sampler,
        "workers": cfg.search.workers,
        "store_context": context,
    }
    return {
        "schema": RECIPE_SCHEMA,
        "wattsmith_version": tool_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": setup.model.identity(),
        "target": setup.target.fingerprint(),
        "settings": best.candidate.to_dict(),
        **_layout_block(best.candidate, setup.target),
        # what those settings built and served: a rebuild or a deployment's copy is checked against it
        **(
            {"artifact": {"what": best.artifact.get("what"), "files": best.artifact["files"]}}
            if best.artifact
            else {}
        ),
        "constraints": {
            "quality": {
                "max_ppl_increase": cfg.quality.max_ppl_increase,
                "min_top1_agreement": cfg.quality.min_top1_agreement,
                "max_kl": cfg.quality.max_kl,
            },
            "slo": asdict(cfg.workload.slo),
        },
        "measurement": {
            "workload": asdict(cfg.workload),
            "quality": asdict(cfg.quality),
            "quality_text_sha256": setup.text_sha256,
            # the prompts batches cycle through (plan.prompt_pool): verify re-makes and compares them
            "prompt_pool": int(setup.workload.prompts.shape[0]),
            "prompt_tokens_sha256": tensor_sha256(setup.workload.prompts),
            # what a serving engine was sized for (a trace's longest line, not the config's bound)
            "longest_request_tokens": _longest_request(setup),
            "idle_watts": _kept(idle_watts, 3),
            "protocol_version": PROTOCOL_VERSION,
            # what the labelled CPU-time estimate multiplies by; `verify` re-estimates with these
            "energy_estimate": estimate_coefficients(setup.target),
        },
        "evidence": evidence,
    }


def _longest_request(setup: MeasurementSetup) -> int | None:
    """Prompt and output tokens of the longest request the measured streams made; None offline."""
    if not setup.streams:
        return None
    return max(s.longest_request_tokens for s in setup.streams.values())


def _selection_evidence(selection: Selection) -> dict[str, Any]:
    return {
        "distinguishable_from_runner_up": selection.distinguishable,
        "reason": selection.reason,
        "finalists": [
            {
                "label": f.label,
                "goodput_tokens_per_joule": {
                    "mean": _kept(f.mean, 4) if f.samples else None,  # (failed: no figure, not 0)
                    # fewer than two windows bound nothing: no interval rather than [-.inf, .inf]
                    "ci95": [_kept(f.shown_low, 4), _kept(f.high, 4)] if len(f.samples) > 1 else None,
                },
                "windows": len(f.samples),
                "latency_headroom": None if f.headroom is None else round(f.headroom, 3),
                "feasible": f.feasible,
                "near_miss": f.near_miss,
            }
            for f in selection.finalists
        ],
    }


def _layout_block(candidate: Candidate, target: TargetSpec) -> dict[str, Any]:
    """A `layout` entry for a candidate of several processes (rebuilt from `settings`; this one
    names the GPUs or cores for the reader); nothing for one process."""
    record = layout_record(candidate, target)
    return {"layout": record} if record else {}


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base > 0 else None


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    header = (
        "# wattsmith recipe: deployment settings selected by measurement, with the evidence.\n"
        "# Rebuild: optimizer.load_recipe(path). Re-measure here: optimize verify <this file>.\n"
    )
    return write_atomically(path, header + yaml.safe_dump(recipe, sort_keys=False, width=110))


@dataclass(frozen=True)
class Recipe:
    path: Path
    data: dict[str, Any]
    candidate: Candidate
    model: ModelConfig
    target: TargetConfig  # the kind and the estimate's coefficients the evidence was measured with
    workload: WorkloadConfig
    quality: QualityConfig

    @property
    def target_kind(self) -> str:
        return self.target.kind

    @property
    def evidence(self) -> dict[str, Any]:
        return dict(self.data["evidence"])


def read_recipe(path: Path | str) -> Recipe:
    """Parse and validate a recipe; anything malformed is a UserError naming the part."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, not a recipe file" if path.is_dir() else "does not exist"
        raise UserError("recipe", f"{path} {problem}", "pass the path of a recipe.yaml written by optimize")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:  # a binary file named as the recipe (read exit 1: 'failed')
        raise UserError(
            "recipe",
            f"{path} is not a text file (not UTF-8)",
            "pass the path of a recipe.yaml written by optimize",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(
            "recipe", f"{path} is not valid YAML ({exc.__class__.__name__})", "restore it from git"
        ) from None
    if data is None:
        raise UserError("recipe", f"{path} is empty", "restore it from git, or run optimize to write one")
    try:
        return _parsed(data, path)
    except UserError as exc:  # a field this version does not know is no typo: the fix is an upgrade
        newer = newer_writer(data) if isinstance(data, dict) else None
        if newer is None:
            raise
        fix = f"upgrade wattsmith to read it (pip install -U wattsmith), or {exc.fix}"
        raise UserError(exc.field, f"{exc.problem} ({newer})", fix) from None


def _parsed(data: Any, path: Path) -> Recipe:
    if not isinstance(data, dict) or data.get("schema") not in SUPPORTED_SCHEMAS:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserError(
            "recipe.schema", f"{path}: unsupported schema {found!r}", f"expected one of {SUPPORTED_SCHEMAS}"
        )
    for part in ("model", "target", "settings", "measurement", "evidence"):
        if not isinstance(data.get(part), dict):
            raise UserError(f"recipe.{part}", f"{path}: is missing or not a mapping", "restore it from git")
    check_known_keys(data, RECIPE_KEYS, "recipe")
    for part, keys in BLOCK_KEYS.items():
        check_known_keys(data[part], keys, f"recipe.{part}")
    check_artifact(data.get("artifact"), path)
    check_evidence(data, path)
    try:
        measurement = data["measurement"]
        workload, quality = measured_configs(measurement)
        if "constraints" in data:  # what verify enforces: the search's bounds, or a reader's edit
            slo, quality = constraints_of(data["constraints"], workload.slo, quality)
            workload = replace(workload, slo=slo)
        return Recipe(
            path=path,
            data=data,
            candidate=Candidate.from_dict(checked_settings(data["settings"])),
            model=model_config_of(data["model"]),
            target=target_of(data["target"], measurement, data["evidence"]["energy"]),
            workload=workload,
            quality=quality,
        )
    except UserError as exc:
        raise UserError(f"recipe.{exc.field}", exc.problem, exc.fix) from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UserError(
            "recipe", f"{path} is missing or has a malformed field ({exc})", "restore it from git"
        ) from None


def default_cache_dir() -> Path:
    return Path(cache_dir_from(os.environ)).expanduser()


def load_recipe(
    path: Path | str,
    model_source: str | None = None,
    cache_dir: Path | None = None,
    request_tokens: int | None = None,
) -> Engine:
    """An engine built exactly as the recipe says, ready to `generate` (and to `submit`, when it
    serves requests itself).

    `model_source` replaces the recipe's model source (e.g. the same weights at another path);
    the weights must still hash to the recipe's `weight_sha256`. A relative recorded source is
    found from the current directory or from the recipe's (`source_here`); a local one found
    nowhere is refused, not tried as a hub id. `request_tokens` (a count > 0) is the
    longest request (prompt and output tokens) to be served, for a serving recipe by default the
    longest its stream made: an engine that gives each request a fixed slot (llama.cpp's context,
    a paged cache) is sized for it now, since it cannot grow while requests run.
    """
    # before any backend imports onnxruntime, whose import alone starts its telemetry (a device id
    # under ~/.cache/Microsoft); optimize and verify set it in measure.setup; a user's own value is kept
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    from optimizer.backends.registry import serves_gguf
    from optimizer.model import resolve_model

    check_request_tokens(request_tokens)
    recipe = read_recipe(path)
    cache = cache_dir or default_cache_dir()
    target = target_here(recipe)  # before the weights are hashed or de-quantized: a GPU's recipe fails now
    refuse_excluded_here(recipe, target)
    convert = not serves_gguf(recipe.candidate.backend)
    model_cfg = model_config_for(recipe, model_source)
    if not model_source:
        refuse_source_nowhere(recipe, model_cfg.source)
    with model_errors_name(bool(model_source)):
        model = resolve_model(model_cfg, cache, convert_gguf=convert)
    check_weights(recipe, model.weight_sha256)
    return build_here(recipe, model, target, cache, request_tokens)


def model_config_for(recipe: Recipe, model_source: str | None) -> ModelConfig:
    return replace(recipe.model, source=model_source or source_here(recipe.model.source, recipe.path))


def check_weights(recipe: Recipe, weight_sha256: str) -> None:
    expected = recipe.data["model"]["weight_sha256"]
    if weight_sha256 != expected:
        raise UserError(
            "model.weight_sha256",
            f"the weights hash to {weight_sha256[:12]}…, the recipe was measured on {expected[:12]}…",
            "point --model at the weights the recipe names, or run optimize again for these weights",
        )
