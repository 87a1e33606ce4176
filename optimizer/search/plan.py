"""The search plan: what every worker of a search derives alike from the config and its
measurement setup (the candidates, the baseline, and the store context they are measured in)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optimizer.backends.base import RowRules
from optimizer.backends.registry import spec_for
from optimizer.config import HALF_REFERENCES, QUALITY_REFERENCES, RunConfig
from optimizer.config.workload import TRACE_IGNORES
from optimizer.errors import UserError
from optimizer.files import tensor_sha256
from optimizer.measure import PROTOCOL_VERSION
from optimizer.measure.energy import estimate_coefficients
from optimizer.measure.setup import MeasurementSetup, prepare_measurement
from optimizer.search.prefilter import memory_fit_reason, reference_fit_reason
from optimizer.space import (
    Candidate,
    baseline_candidate,
    dequantized_model_needed,
    enumerate_candidates,
    exclusion_reason,
    reference_candidate,
    searched_backends,
)
from optimizer.store import STORE_SCHEMA, context_key

log = logging.getLogger(__name__)

# An offline measurement depends on these workload fields only (serving fields are not read).
OFFLINE_FIELDS = ("prompt_tokens", "max_new_tokens", "min_window_seconds", "repeats", "warmup_batches", "slo")
# A stream's windows are its requests: these offline fields change nothing it measures (the
# prompt pool's length and new tokens still drive the greedy-parity check at build).
NOT_SERVING_FIELDS = ("idle_seconds", "min_window_seconds", "warmup_batches")
# Which windows a measurement keeps, not what a window measures: a result measured with other
# retries is comparable (not in the offline fields above either).
KEEPING_FIELDS = ("disturbed_retries",)
MIN_PROMPTS = 16


def prompt_pool(cfg: RunConfig) -> int:
    """Prompts a run tokenizes (the coordinator's and every worker's alike): a batch of the largest
    size, at least 16. Batches cycle through the whole pool, so its size is part of what is measured
    (the results' key hashes every row)."""
    return max([*cfg.space.batch_sizes, MIN_PROMPTS])


def prepare_run_measurement(cfg: RunConfig, cache_dir: Path) -> MeasurementSetup:
    """The measurement setup of a search (its coordinator's and every worker's alike): a GGUF model
    is de-quantized only when the reference or a backend of the space needs it."""
    return prepare_measurement(
        cfg.model,
        cfg.target,
        cfg.workload,
        cfg.quality,
        cache_dir,
        prompt_pool(cfg),
        convert_gguf=dequantized_model_needed(searched_backends(cfg.space), cfg.quality.reference),
    )


def protocol(
    cfg: RunConfig, text_sha256: str, energy_source: str, stream_sha256: str | None = None
) -> dict[str, Any]:
    """What must match for two measurements to be comparable (the quality bound is not in it):
    the protocol's version (optimizer/measure/__init__.py), the workload, the quality text (by
    content), how quality is scored, the energy source and, for the estimate, its coefficients.
    A serving protocol names its request stream by content (`stream_sha256`)."""
    workload = asdict(cfg.workload)
    if not cfg.workload.serving:
        workload = {k: workload[k] for k in OFFLINE_FIELDS}
    else:
        workload = {k: v for k, v in workload.items() if k not in (*NOT_SERVING_FIELDS, *KEEPING_FIELDS)}
        if stream_sha256 is not None:
            workload["stream_sha256"] = stream_sha256
            if workload.get("trace"):  # a trace by its content: the same file moved is the same stream
                workload["trace"] = "(by content)"
                # replayed at its own times and lengths (and recorded at its own rate): the generated
                # stream's fields (workload.rate, requests, lengths, turns...) play no part, so the
                # same trace under workload=agent or workload.requests=100 reuses what was measured
                workload = {k: v for k, v in workload.items() if k not in TRACE_IGNORES}
    parts = quality_protocol(cfg, text_sha256) | {"workload": workload, "energy_source": energy_source}
    if energy_source == "estimate":  # joules are arithmetic on these: other values, other joules
        parts["estimate_coefficients"] = estimate_coefficients(cfg.target)
    return parts


def quality_protocol(cfg: RunConfig, text_sha256: str) -> dict[str, Any]:
    """What a quality probe's numbers depend on beside the model and the target: the protocol's
    version, the quality text (by content), how it is scored and, when it is not fp32, what it is
    compared with (left out for fp32: stores from before the choice keep their contexts)."""
    parts: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "quality_text_sha256": text_sha256,
        "quality_sequences": cfg.quality.num_sequences,
        "quality_seq_tokens": cfg.quality.seq_tokens,
        "quality_batch_size": cfg.quality.batch_size,
    }
    if cfg.quality.reference != "fp32":
        parts["quality_reference"] = cfg.quality.reference
    return parts


def measured_inputs(setup: MeasurementSetup) -> dict[str, str | None]:
    """What the weights' hash does not cover: the model's config (a fixed rope_theta changes every
    logit), the token ids actually measured (a fixed tokenizer changes them, not the text) and,
    when it is trusted to run, the model's own code (its modelling files are not weights)."""
    config = setup.model.path / "config.json"
    inputs = {
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "quality_tokens_sha256": tensor_sha256(setup.quality_tokens),
        "prompt_tokens_sha256": tensor_sha256(setup.workload.prompts),
    }
    if setup.model.trust_remote_code:  # only then: other models' stores keep their contexts
        inputs["remote_code_sha256"] = _code_sha256(setup.model.path)
    return inputs


def quality_context(cfg: RunConfig, setup: MeasurementSetup) -> str:
    """The context of the quality rows: the model, the target and the quality protocol, not the
    workload, its SLO or the energy source. A probe scores the quality text on the candidate's
    numerics alone, so every measurement of the same numerics shares one probe."""
    inputs = measured_inputs(setup)
    del inputs["prompt_tokens_sha256"]  # the probe never reads the workload's prompts
    return context_key(
        {
            "model": setup.model.weight_sha256,
            "inputs": inputs,
            "target": setup.target.measured_identity(),
            "quality": quality_protocol(cfg, setup.text_sha256),
            # quality rows have no schema column (trial rows do): another schema, other rows
            "store_schema": STORE_SCHEMA,
        }
    )


def _code_sha256(folder: Path) -> str:
    combined = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        combined.update(file.name.encode())
        combined.update(hashlib.sha256(file.read_bytes()).digest())
    return combined.hexdigest()


@dataclass(frozen=True)
class SearchPlan:
    """What every worker of a search derives alike from the config and its measurement setup."""

    candidates: list[Candidate]  # valid by the rules and fitting the memory budget
    pruned: list[tuple[Candidate, str]]  # valid but too big for the memory budget
    excluded: list[tuple[Candidate, str]]  # ruled out for the target
    baseline: Candidate
    context: str  # the store context: model weights, target fingerprint, measurement protocol
    quality_context: str  # the quality rows' context: what a quality probe depends on


def plan_search(cfg: RunConfig, setup: MeasurementSetup) -> SearchPlan:
    valid, excluded = enumerate_candidates(
        cfg.space, setup.target, cfg.workload.serving, setup.model.shape, setup.model.format
    )
    # a stream's own longest request (a trace's is not bounded by the workload's length fields)
    longest = max(s.longest_request_tokens for s in setup.streams.values()) if setup.streams else None
    rows = longest if longest is not None else cfg.workload.longest_request_tokens()
    valid, beyond = _within_row_limits(valid, rows, cfg)
    excluded = [*excluded, *beyond]
    baseline = baseline_candidate(
        cfg.space, setup.target, cfg.quality.reference, setup.model.shape.checkpoint_precision
    )
    fits: list[Candidate] = []
    pruned: list[tuple[Candidate, str]] = []
    for candidate in valid:
        reason = memory_fit_reason(candidate, setup.model.shape, setup.target, cfg.workload, longest)
        if reason:
            pruned.append((candidate, reason))
        else:
            fits.append(candidate)
    if fits:  # a search runs (else the pruned say why not): it measures the baseline whatever the budget
        pruned = _measured_baseline(pruned, baseline)
    context = context_key(
        {
            "model": setup.model.weight_sha256,
            "inputs": measured_inputs(setup),
            "target": setup.target.measured_identity(),
            "protocol": protocol(
                cfg, setup.text_sha256, setup.meter.source, setup.stream.sha256 if setup.stream else None
            ),
        }
    )
    reference = reference_candidate(cfg.quality.reference, setup.target)
    _check_reference_runs(reference, cfg, setup)
    _check_reference_fits(reference, cfg, setup)
    _warn_of_a_rounded_reference(cfg, setup)
    return SearchPlan(fits, pruned, excluded, baseline, context, quality_context(cfg, setup))


def _within_row_limits(
    valid: list[Candidate], longest: int, cfg: RunConfig
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Candidates whose backend bounds a row's tokens (RowRules: TensorRT's profiles, native or
    ONNX Runtime's provider) are excluded now when the run's longest request or quality window
    is longer, not exported, calibrated and built first, then failed."""
    need = max(longest, cfg.quality.seq_tokens)
    what = "quality.seq_tokens" if cfg.quality.seq_tokens == need else "the longest request"
    kept: list[Candidate] = []
    beyond: list[tuple[Candidate, str]] = []
    for candidate in valid:
        spec = spec_for(candidate.settings)
        reason = spec.row_reason(candidate.settings, need) if isinstance(spec, RowRules) else None
        if reason is None:
            kept.append(candidate)
        else:
            beyond.append((candidate, f"{reason}: {what} is {need}"))
    return kept, beyond


def _measured_baseline(
    pruned: list[tuple[Candidate, str]], baseline: Candidate
) -> list[tuple[Candidate, str]]:
    """The pruned without the baseline: it is measured whatever the budget (the ratios need it),
    so it is never pruned. Over the budget it is no choice to deploy either: left out of the
    space's candidates, it is measured for the ratios only, as a baseline outside the space."""
    for candidate, reason in pruned:
        if candidate == baseline:
            log.warning(
                "the baseline %s %s: measured for the ratios only, it cannot be selected (space.baseline)",
                baseline.label(),
                reason,
            )
    return [(c, why) for c, why in pruned if c != baseline]


def _check_reference_runs(reference: Candidate, cfg: RunConfig, setup: MeasurementSetup) -> None:
    """A reference the target cannot run (a GGUF without llama.cpp, or a CPU-only llama.cpp build on
    a GPU target; bf16 or fp16 without the target's support) is found now, not as the same failure
    of every candidate waiting for the reference."""
    reason = exclusion_reason(reference, setup.target, model_format=setup.model.format)
    if reason:
        raise UserError(
            "quality.reference",
            f"is {cfg.quality.reference}, which cannot run here: {reason}",
            "use quality.reference=fp32",
        )


def _check_reference_fits(reference: Candidate, cfg: RunConfig, setup: MeasurementSetup) -> None:
    """A reference the device cannot hold is found now: otherwise every candidate would wait for
    it, and the out-of-memory killer would end each of their measuring processes in turn."""
    shape = setup.model.shape
    reason = reference_fit_reason(reference, shape, setup.target, cfg.workload)
    if reason is None:
        return
    name = QUALITY_REFERENCES[cfg.quality.reference].removeprefix("the ")  # gguf's: "the GGUF as shipped"
    raise UserError(
        "quality.reference",
        f"the {name} reference of this {shape.num_parameters / 1e9:.1f} B-parameter model {reason}",
        _smaller_reference(cfg, setup),
    )


def _smaller_reference(cfg: RunConfig, setup: MeasurementSetup) -> str:
    """The way out of a reference too large for the device: a GGUF searched in llama.cpp against
    itself, a checkpoint compared with itself in its own half precision (or bf16) where that runs
    and fits, else another machine."""
    if setup.model.format == "gguf" and cfg.quality.reference != "gguf":
        return "search the GGUF in llama.cpp against itself: space=cpu-llamacpp quality.reference=gguf"
    if cfg.quality.reference == "fp32":
        shipped = setup.model.shape.checkpoint_precision
        own = shipped if shipped in HALF_REFERENCES else "bf16"
        for half in dict.fromkeys([own, "bf16"]):  # an fp16 checkpoint on a target without fp16: bf16
            candidate = reference_candidate(half, setup.target)
            if (
                exclusion_reason(candidate, setup.target) is None
                and reference_fit_reason(candidate, setup.model.shape, setup.target, cfg.workload) is None
            ):
                return (
                    f"compare with the checkpoint in {half}, half of fp32's memory: quality.reference={half}"
                )
    if cfg.quality.reference == "gguf":  # already the way out named below: the file itself is too big
        return "measure on a machine with more memory, or give model= a smaller quantization of the GGUF (e.g. Q4_K_M)"
    return (
        "measure on a machine with more memory (a GGUF of the model can be searched in llama.cpp "
        "against itself: quality.reference=gguf)"
    )


def _warn_of_a_rounded_reference(cfg: RunConfig, setup: MeasurementSetup) -> None:
    """A half-precision reference of a checkpoint shipped in another precision rounds its weights:
    candidates are then judged against a copy less exact than the model itself."""
    shipped = setup.model.shape.checkpoint_precision
    if cfg.quality.reference in HALF_REFERENCES and shipped not in (None, cfg.quality.reference):
        log.warning(
            "quality.reference=%s rounds this %s checkpoint's weights: candidates are judged against a "
            "copy less exact than the model (quality.reference=fp32 where it fits)",
            cfg.quality.reference,
            shipped,
        )
