"""The search space: frozen candidates, and the rules that say which ones a target can run.

A candidate is `backend settings x batch size x threads x layout`. Backend settings are one frozen
dataclass per backend; each backend's spec (`backends/registry.py`, keyed by that type) says which
settings its axes ask for and which of them a target can run. The layout spreads one candidate
over the hardware: `replicas` independent engine processes (the batch split between them) of
`tensor_parallel` ranks each; `threads` is per process. A 1 x 1 layout is not written in a
candidate's dict, so its key and every recipe without a layout stay what they were.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any, get_type_hints

from optimizer.backends.base import ModelRules
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.registry import SPECS_BY_NAME, BackendSettings, serves_gguf, spec_for
from optimizer.backends.torch.settings import TorchSettings, build_key_tag
from optimizer.backends.torch.spec import int4_shape_reason
from optimizer.config import HALF_REFERENCES, SpaceConfig
from optimizer.errors import UserError
from optimizer.model import ModelShape
from optimizer.target import TargetSpec

LAYOUT_FIELDS = ("replicas", "tensor_parallel")
EXTRA_BACKEND = "torch"  # an extra candidate's backend when it names none
# A candidate's counts and their least valid value (threads 0: the library's default count).
COUNT_FIELDS = {"batch_size": 1, "threads": 0, "replicas": 1, "tensor_parallel": 1}


@dataclass(frozen=True)
class Candidate:
    """One deployment configuration. `threads` = 0 leaves the library's default thread count;
    otherwise it is the thread count of each of the candidate's `processes`."""

    settings: BackendSettings
    batch_size: int
    threads: int
    replicas: int = 1
    tensor_parallel: int = 1

    @property
    def backend(self) -> str:
        return self.settings.BACKEND

    @property
    def processes(self) -> int:
        """Engine processes (and devices, on a GPU target) the candidate runs on."""
        return self.replicas * self.tensor_parallel

    @property
    def parallel(self) -> bool:
        return self.processes > 1

    def layout(self) -> dict[str, int]:
        """The layout fields that differ from one process: written in dicts, keys and recipes."""
        return {name: getattr(self, name) for name in LAYOUT_FIELDS if getattr(self, name) != 1}

    def to_dict(self) -> dict[str, Any]:
        values = {"backend": self.backend, "batch_size": self.batch_size, "threads": self.threads}
        return values | self.layout() | _settings_dict(self.settings)

    def axes(self) -> dict[str, Any]:
        """Every axis value, the layout's included even at 1 (a sampler's view of the candidate)."""
        layout = {name: getattr(self, name) for name in LAYOUT_FIELDS}
        return self.to_dict() | _settings_dict(self.settings, every_field=True) | layout

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """Rebuild from `to_dict()` output; unknown backends or fields are a UserError."""
        values = dict(data)
        backend = values.pop("backend", None)
        spec = SPECS_BY_NAME.get(str(backend))
        if spec is None:
            raise UserError(
                "settings.backend", f"unknown backend {backend!r}", f"use one of {list(SPECS_BY_NAME)}"
            )
        settings_type = spec.settings_type
        for name in ("batch_size", "threads"):  # the layout's are left out at 1 x 1
            if name not in values:
                raise UserError(f"settings.{name}", "is missing", f"e.g. {name}: {COUNT_FIELDS[name]}")
        counts = {name: values.pop(name, 1) for name in COUNT_FIELDS}
        for name, low in COUNT_FIELDS.items():
            value = counts[name]
            if type(value) is not int or value < low:  # not int(): 16.9 would be 16, True would be 1
                raise UserError(
                    f"settings.{name}", f"must be an integer >= {low}, got {value!r}", f"e.g. {name}: 2"
                )
        known = {f.name for f in fields(settings_type)}
        unknown = set(values) - known
        if unknown:
            raise UserError(
                "settings", f"unknown {backend} settings {sorted(unknown)}", f"known: {sorted(known)}"
            )
        return cls(settings=settings_type(**values), **counts)

    def key(self) -> str:
        return _digest(self.to_dict() | build_key_tag(self.settings))

    def numerics_key(self) -> str:
        """What the quality probe's numbers depend on: candidates sharing it share one probe.
        Batch size, threads and replicas never change them; a tensor-parallel degree sums partial
        products in another order."""
        tp = {"tensor_parallel": self.tensor_parallel} if self.tensor_parallel != 1 else {}
        tag = build_key_tag(self.settings)
        return _digest({"backend": self.backend} | self.settings.probe_settings() | tp | tag)

    def label(self) -> str:
        threads = f" t{self.threads}" if self.threads else ""
        replicas = f" r{self.replicas}" if self.replicas != 1 else ""
        tp = f" tp{self.tensor_parallel}" if self.tensor_parallel != 1 else ""
        return f"{self.backend} {self.settings.label()} b{self.batch_size}{threads}{replicas}{tp}"


def _settings_dict(settings: BackendSettings, every_field: bool = False) -> dict[str, Any]:
    """The settings as dicts and keys write them: a whole number given for a float field (YAML's
    `2`) as the float the grid gives (2.0), so that equal settings get one key; a value already
    of its field's type is written as it was, and keeps its key. A field added after candidates
    were written (`KEYED_WHEN_SET`) is left out at its default, so that they keep their keys;
    `every_field` keeps it (a sampler's view)."""
    values = asdict(settings)
    settings_type: type = type(settings)
    for name in _float_fields(settings_type):
        if type(values[name]) is int:
            values[name] = float(values[name])
    if not every_field:
        for name, default in _keyed_when_set(settings_type).items():
            if values[name] == default:
                del values[name]
    return values


@cache
def _keyed_when_set(settings_type: type) -> dict[str, Any]:
    """The settings type's fields left out of keys at their default, with those defaults."""
    names = getattr(settings_type, "KEYED_WHEN_SET", ())
    return {f.name: f.default for f in fields(settings_type) if f.name in names}


@cache
def _float_fields(settings_type: type) -> tuple[str, ...]:
    hints = get_type_hints(settings_type)  # the annotations are strings (postponed evaluation)
    return tuple(f.name for f in fields(settings_type) if hints[f.name] is float)


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def baseline_candidate(
    space: SpaceConfig, target: TargetSpec, reference: str = "fp32", checkpoint_precision: str | None = None
) -> Candidate:
    """The careless deployment gains are reported against: `space.baseline` in torch, in the
    checkpoint's own precision for `precision: auto` (what transformers loads by default; fp32
    where the config names none), in the reference's precision when that is bf16 or fp16 (an fp32
    baseline would need the very memory such a reference saves), or with a GGUF reference
    (`quality.reference=gguf`) the GGUF as shipped at the baseline's batch size."""
    base = space.baseline
    if reference == "gguf":
        return Candidate(LlamaCppSettings(), batch_size=base.batch_size, threads=_all_cores(target))
    if reference in HALF_REFERENCES:
        precision = reference
    elif base.precision == "auto":
        precision = checkpoint_precision or "fp32"
    else:
        precision = base.precision
    settings = TorchSettings(precision=precision, quantization=base.quantization, kv_cache=base.kv_cache)
    return Candidate(settings, batch_size=base.batch_size, threads=_all_cores(target))


def reference_settings(precision: str = "fp32") -> TorchSettings:
    """Quality reference: the unoptimized model, eager in `precision` (fp32 unless the checkpoint's
    own half precision was asked for), plain KV cache."""
    return TorchSettings(precision=precision, quantization="none", kv_cache="dynamic", attention="sdpa")


def reference_candidate(reference: str, target: TargetSpec) -> Candidate:
    """The quality reference at batch 1 on all cores (torch's thread count is process-wide and a
    candidate may have lowered it): torch eager in a precision, or a GGUF as shipped in llama.cpp
    (f16 KV cache)."""
    settings = LlamaCppSettings() if reference == "gguf" else reference_settings(reference)
    return Candidate(settings, batch_size=1, threads=_all_cores(target))


def _all_cores(target: TargetSpec) -> int:
    """Threads for every core of a CPU target; 0 (the library's default) on a GPU."""
    return 0 if target.is_cuda else target.cores


def dequantized_model_needed(backends: Iterable[str], reference: str) -> bool:
    """Whether a GGUF model must be de-quantized into a Hugging Face directory to measure these
    backends: for the fp32 reference, or for a backend that cannot load the GGUF itself. Only
    llama.cpp with a GGUF reference reads the file as shipped."""
    return reference != "gguf" or not all(serves_gguf(name) for name in backends)


def searched_backends(space: SpaceConfig) -> set[str]:
    """The backends a space's candidates use: its axes' and its extra candidates'."""
    return {*space.backends, *(str(extra.get("backend", EXTRA_BACKEND)) for extra in space.extra)}


def enumerate_candidates(
    space: SpaceConfig,
    target: TargetSpec,
    serving: bool = False,
    shape: ModelShape | None = None,
    model_format: str | None = None,
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """All combinations of the space's axes plus its `extra` candidates, split into valid ones
    and (excluded, rule) pairs. `serving`: the workload is a request stream; `shape`: the model's,
    for the layout rules that read head counts; `model_format`: the model's (gguf, hf-dir, hub),
    for backends that load some formats only (None: not checked). A layout the space asks for by
    value that this target or model can never run is a UserError naming the axis."""
    check_layout_axes(space, target, shape)
    valid: list[Candidate] = []
    excluded: list[tuple[Candidate, str]] = []
    # Explicit extra candidates come first: they are asked for by name (often a reference). Two
    # entries may spell one deployment (threads left to the default or given): the first is kept.
    extra: dict[str, Candidate] = {}
    for index, item in enumerate(space.extra):
        candidate = _extra_candidate(item, index, target, shape)
        extra.setdefault(candidate.key(), candidate)
    grid = [c for c in _combinations(space, target) if c.key() not in extra]
    for candidate in [*extra.values(), *grid]:
        reason = exclusion_reason(candidate, target, serving, shape, model_format)
        if reason is None:
            valid.append(candidate)
        else:
            excluded.append((candidate, reason))
    return valid, excluded


def _extra_candidate(
    item: dict[str, Any], index: int, target: TargetSpec, shape: ModelShape | None
) -> Candidate:
    values = {"backend": EXTRA_BACKEND, "threads": 0, **item}
    # a count that is not a whole number is from_dict's to refuse, naming it: 1 until then
    counts = [values.get(name, 1) for name in ("replicas", "tensor_parallel")]
    processes = math.prod(count if type(count) is int and count > 0 else 1 for count in counts)
    if not target.is_cuda and not values["threads"]:
        values["threads"] = max(target.cores // processes, 1)
    try:
        candidate = Candidate.from_dict(values)
    except UserError as exc:
        setting = exc.field.removeprefix("settings")  # ".replicas" for a field, "" for the settings
        raise UserError(f"space.extra[{index}]{setting}", exc.problem, exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"space.extra[{index}]", str(exc), "give backend settings, batch_size and threads"
        ) from None
    problem = layout_reason(candidate.replicas, candidate.tensor_parallel, target, shape)
    if problem is not None:
        name, reason = problem
        raise UserError(f"space.extra[{index}].{name}", reason, LAYOUT_FIX)
    return candidate


LAYOUT_FIX = "use a smaller degree (the model's head counts and the target's cores or GPUs bound it), or 1"


def check_layout_axes(space: SpaceConfig, target: TargetSpec, shape: ModelShape | None) -> None:
    """Every replicas and tensor-parallel value the space names must be runnable here, and some
    thread count (values above the cores are excluded one by one: a preset can serve larger CPUs)."""
    if not target.is_cuda and space.threads and min(space.threads) > target.cores:
        raise UserError(
            "space.threads",
            f"{space.threads}: every value is above this CPU's {target.cores} cores",
            f"use values <= {target.cores}, or 0 for all cores",
        )
    # A value is refused when it cannot run even beside the other axis at 1; a combination of
    # values that run alone (2 replicas x 2 ranks on 2 cores) is excluded with its reason.
    layouts = [*((r, 1) for r in space.replicas), *((1, d) for d in space.tensor_parallel)]
    for replicas, degree in layouts:
        problem = layout_reason(replicas, degree, target, shape)
        if problem is not None:
            name, reason = problem
            raise UserError(f"space.{name}", reason, LAYOUT_FIX)


def layout_reason(
    replicas: int, degree: int, target: TargetSpec, shape: ModelShape | None
) -> tuple[str, str] | None:
    """(the layout field at fault, why) when no candidate of this layout can run on the target
    (cores, GPUs) or shard the model (a tensor-parallel plan, heads divisible by the degree);
    None when it can."""
    if degree > 1 and shape is not None and not shape.tensor_parallel_plan:
        return "tensor_parallel", (
            f"{degree} needs a tensor-parallel plan (base_model_tp_plan), and transformers has none "
            "for this model's architecture"
        )
    if degree > 1 and shape is not None:
        for what, heads in (("attention", shape.num_attention_heads), ("key-value", shape.num_kv_heads)):
            if heads % degree:
                return "tensor_parallel", f"{degree} does not divide the model's {heads} {what} heads"
    processes = replicas * degree
    field = "tensor_parallel" if degree > 1 and replicas == 1 else "replicas"
    if target.is_cuda:
        assert target.gpu is not None
        free = target.device_count - target.gpu.index
        if processes > free:
            return field, f"{replicas} x {degree} = {processes} GPUs > {free} from target.device_index"
    elif processes > target.cores:
        return field, f"{replicas} x {degree} = {processes} processes > {target.cores} cores"
    return None


def _combinations(space: SpaceConfig, target: TargetSpec) -> Iterator[Candidate]:
    # Threads are a CPU axis (per process); on a GPU target the host thread count is the library's.
    seen: set[str] = set()
    layouts = list(itertools.product(space.replicas, space.tensor_parallel))
    for backend in space.backends:
        for settings in SPECS_BY_NAME[backend].settings_for(space):
            for batch_size, (replicas, degree) in itertools.product(space.batch_sizes, layouts):
                for thread_count in _threads(space, target, replicas * degree):
                    candidate = Candidate(settings, batch_size, thread_count, replicas, degree)
                    if candidate.key() not in seen:
                        seen.add(candidate.key())
                        yield candidate


def _threads(space: SpaceConfig, target: TargetSpec, processes: int) -> list[int]:
    """Threads per process: 0 in the axis shares all cores among the processes."""
    if target.is_cuda:
        return [0]
    return sorted({t or max(target.cores // processes, 1) for t in space.threads})


def exclusion_reason(
    candidate: Candidate,
    target: TargetSpec,
    serving: bool = False,
    shape: ModelShape | None = None,
    model_format: str | None = None,
) -> str | None:
    """Why the target (and the workload's kind, the model's shape and format when given) cannot
    run this candidate, or None when it can. Pure rules, no measuring."""
    if candidate.threads > target.cores:
        return f"threads {candidate.threads} > {target.cores} cores"
    if candidate.parallel:
        problem = layout_reason(candidate.replicas, candidate.tensor_parallel, target, shape)
        reason = problem[1] if problem else _parallel_reason(candidate, target)
        if reason:
            return reason
    if (reason := int4_shape_reason(candidate.settings, shape)) is not None:
        return reason
    spec = spec_for(candidate.settings)
    if model_format is not None and isinstance(spec, ModelRules):
        reason = spec.model_reason(candidate.settings, model_format)
        if reason is not None:
            return reason
    return spec.exclusion_reason(candidate.settings, target) or spec.workload_reason(
        candidate.settings, candidate.batch_size, serving
    )


def _parallel_reason(candidate: Candidate, target: TargetSpec) -> str | None:
    settings = candidate.settings
    if not isinstance(settings, TorchSettings):
        return "replicas and tensor parallelism are built for the torch backend only"
    if settings.loop == "slots":
        return "loop=slots serves from one process: replicas and tensor parallelism are not built for it"
    if candidate.batch_size < candidate.replicas:
        return f"batch {candidate.batch_size} gives fewer requests than {candidate.replicas} replicas"
    if not target.is_cuda and candidate.processes * candidate.threads > target.cores:
        return (
            f"{candidate.processes} processes x {candidate.threads} threads > {target.cores} cores"
            " (each process is pinned to its own cores)"
        )
    if candidate.tensor_parallel > 1:
        if settings.quantization != "none" or settings.compile or settings.loop != "hf":
            return "tensor parallelism shards unquantized, uncompiled HF generate only"
        if settings.kv_cache != "dynamic" or settings.attention != "sdpa":
            return "tensor parallelism runs with a dynamic KV cache and sdpa attention"
    return None


def layout_record(candidate: Candidate, target: TargetSpec) -> dict[str, Any] | None:
    """What a recipe and a report say of a layout (None for one process): the degrees, processes,
    threads each, and the GPUs or the share of cores they run on."""
    if not candidate.parallel:
        return None
    record: dict[str, Any] = {
        "replicas": candidate.replicas,
        "tensor_parallel": candidate.tensor_parallel,
        "processes": candidate.processes,
    }
    if target.is_cuda:
        record["devices"] = [f"cuda:{index}" for index in target.gpu_indices(candidate.processes)]
    else:
        record["threads_per_process"] = candidate.threads
        record["cores_pinned"] = candidate.processes * candidate.threads
    return record
