"""The search space: frozen candidates, and the rules that say which ones a target can run.

A candidate is `backend settings x batch size x threads`. Backend settings are one frozen
dataclass per backend; each backend's spec (`backends/registry.py`, keyed by that type) says which
settings its axes ask for and which of them a target can run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from optimizer.backends.base import ModelRules
from optimizer.backends.registry import SPECS_BY_NAME, BackendSettings, spec_for
from optimizer.backends.torch.settings import TorchSettings
from optimizer.config import SpaceConfig
from optimizer.errors import UserError
from optimizer.target import TargetSpec


@dataclass(frozen=True)
class Candidate:
    """One deployment configuration. `threads` = 0 leaves the library's default thread count."""

    settings: BackendSettings
    batch_size: int
    threads: int

    @property
    def backend(self) -> str:
        return self.settings.BACKEND

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "threads": self.threads} | asdict(
            self.settings
        )

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
        try:
            batch_size, threads = int(values.pop("batch_size")), int(values.pop("threads"))
        except (KeyError, TypeError, ValueError):
            raise UserError("settings", "batch_size and threads must be integers", "fix the recipe") from None
        known = {f.name for f in fields(settings_type)}
        unknown = set(values) - known
        if unknown:
            raise UserError(
                "settings", f"unknown {backend} settings {sorted(unknown)}", f"known: {sorted(known)}"
            )
        return cls(settings=settings_type(**values), batch_size=batch_size, threads=threads)

    def key(self) -> str:
        return _digest(self.to_dict())

    def numerics_key(self) -> str:
        """What the quality probe's numbers depend on: candidates sharing it share one probe.
        Batch size and threads never change them."""
        return _digest({"backend": self.backend} | self.settings.probe_settings())

    def label(self) -> str:
        threads = f" t{self.threads}" if self.threads else ""
        return f"{self.backend} {self.settings.label()} b{self.batch_size}{threads}"


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def baseline_candidate(space: SpaceConfig, target: TargetSpec) -> Candidate:
    base = space.baseline
    settings = TorchSettings(precision=base.precision, quantization=base.quantization, kv_cache=base.kv_cache)
    return Candidate(settings, batch_size=base.batch_size, threads=target.cores if not target.is_cuda else 0)


def reference_settings() -> TorchSettings:
    """Quality reference: the unoptimized model, fp32 eager, plain KV cache."""
    return TorchSettings(precision="fp32", quantization="none", kv_cache="dynamic", attention="sdpa")


def enumerate_candidates(
    space: SpaceConfig, target: TargetSpec, serving: bool = False, model_format: str | None = None
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """All combinations of the space's axes plus its `extra` candidates, split into valid ones
    and (excluded, rule) pairs. `serving`: the workload is a request stream; `model_format`: the
    model's (gguf, hf-dir, hub), for backends that load some formats only (None: not checked)."""
    valid: list[Candidate] = []
    excluded: list[tuple[Candidate, str]] = []
    # Explicit extra candidates come first: they are asked for by name (often a reference).
    extra = [_extra_candidate(item, index, target) for index, item in enumerate(space.extra)]
    grid = [c for c in _combinations(space, target) if c not in extra]
    for candidate in extra + grid:
        reason = exclusion_reason(candidate, target, serving, model_format)
        if reason is None:
            valid.append(candidate)
        else:
            excluded.append((candidate, reason))
    return valid, excluded


def _extra_candidate(item: dict[str, Any], index: int, target: TargetSpec) -> Candidate:
    values = {"backend": "torch", "threads": 0, **item}
    if not target.is_cuda and not values["threads"]:
        values["threads"] = target.cores
    try:
        return Candidate.from_dict(values)
    except UserError as exc:
        raise UserError(f"space.extra[{index}]", exc.problem, exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"space.extra[{index}]", str(exc), "give backend settings, batch_size and threads"
        ) from None


def _combinations(space: SpaceConfig, target: TargetSpec) -> Iterator[Candidate]:
    # Threads are a CPU axis; on a GPU target the host thread count is left to the library.
    threads = sorted({t or target.cores for t in space.threads}) if not target.is_cuda else [0]
    seen: set[str] = set()
    for backend in space.backends:
        for settings in SPECS_BY_NAME[backend].settings_for(space):
            for batch_size, thread_count in itertools.product(space.batch_sizes, threads):
                candidate = Candidate(settings, batch_size, thread_count)
                if candidate.key() not in seen:
                    seen.add(candidate.key())
                    yield candidate


def exclusion_reason(
    candidate: Candidate, target: TargetSpec, serving: bool = False, model_format: str | None = None
) -> str | None:
    """Why the target (the workload's kind, the model's format) cannot run this candidate, or None
    when they can. Pure rules, no measuring."""
    if candidate.threads > target.cores:
        return f"threads {candidate.threads} > {target.cores} cores"
    spec = spec_for(candidate.settings)
    if model_format is not None and isinstance(spec, ModelRules):
        reason = spec.model_reason(candidate.settings, model_format)
        if reason is not None:
            return reason
    return spec.exclusion_reason(candidate.settings, target) or spec.workload_reason(
        candidate.settings, candidate.batch_size, serving
    )
