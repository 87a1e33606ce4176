"""The search space: frozen candidates, and the rules that say which ones a target can run.

A candidate is `backend settings x batch size x threads`. Backend settings are one frozen
dataclass per backend; the backend registry is keyed by that type.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from optimizer.config import (
    TORCH_ATTENTION,
    TORCH_KV_CACHES,
    TORCH_LOOPS,
    TORCH_PRECISIONS,
    TORCH_QUANTIZATIONS,
    SpaceConfig,
)
from optimizer.errors import UserError
from optimizer.onnx_settings import (
    NO_WEIGHT_OPTIONS,
    WEIGHT_QUANTIZED,
    OrtGenaiSettings,
    OrtOnnxSettings,
    TensorRTSettings,
    check_choices,
    genai_rule,
    onnx_rule,
    tensorrt_rule,
)
from optimizer.target import TargetSpec


@dataclass(frozen=True)
class TorchSettings:
    """PyTorch + HF generate: dtype, weight quantization, KV cache, compile, attention kernel."""

    BACKEND: ClassVar[str] = "torch"

    precision: str = "fp32"
    quantization: str = "none"
    kv_cache: str = "dynamic"
    compile: bool = False
    attention: str = "sdpa"
    loop: str = "hf"

    def __post_init__(self) -> None:
        check_choices(
            self,
            {
                "precision": TORCH_PRECISIONS,
                "quantization": TORCH_QUANTIZATIONS,
                "kv_cache": TORCH_KV_CACHES,
                "compile": (True, False),
                "attention": TORCH_ATTENTION,
                "loop": TORCH_LOOPS,
            },
        )

    def probe_settings(self) -> dict[str, Any]:
        """The settings the quality probe's numbers depend on. The probe scores a forward pass
        (TorchEngine.score): a KV cache matters only when quantized (it is filled chunk by chunk),
        and compile and the decode loop act only inside generate."""
        settings = {
            "precision": self.precision,
            "quantization": self.quantization,
            "attention": self.attention,
        }
        if self.kv_cache.startswith(("quanto", "hqq")):
            settings["kv_cache"] = self.kv_cache
        return settings

    def label(self) -> str:
        parts = [self.precision]
        if self.quantization != "none":
            parts.append(self.quantization)
        parts.append(f"kv={self.kv_cache}")
        if self.compile:
            parts.append("compiled")
        if self.attention != "sdpa":
            parts.append(self.attention)
        if self.loop != "hf":
            parts.append(f"loop={self.loop}")
        return " ".join(parts)


BackendSettings = TorchSettings | OrtGenaiSettings | OrtOnnxSettings | TensorRTSettings
SETTINGS_TYPES: dict[str, type[BackendSettings]] = {
    t.BACKEND: t for t in (TorchSettings, OrtGenaiSettings, OrtOnnxSettings, TensorRTSettings)
}


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
        settings_type = SETTINGS_TYPES.get(str(backend))
        if settings_type is None:
            raise UserError(
                "settings.backend", f"unknown backend {backend!r}", f"use one of {list(SETTINGS_TYPES)}"
            )
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
    space: SpaceConfig, target: TargetSpec
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """All combinations of the space's axes plus its `extra` candidates, split into valid ones
    and (excluded, rule) pairs."""
    valid: list[Candidate] = []
    excluded: list[tuple[Candidate, str]] = []
    # Explicit extra candidates come first: they are asked for by name (often a reference).
    extra = [_extra_candidate(item, index, target) for index, item in enumerate(space.extra)]
    grid = [c for c in _combinations(space, target) if c not in extra]
    for candidate in extra + grid:
        reason = exclusion_reason(candidate, target)
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
        for settings in _backend_settings(space, backend):
            for batch_size, thread_count in itertools.product(space.batch_sizes, threads):
                candidate = Candidate(settings, batch_size, thread_count)
                if candidate.key() not in seen:
                    seen.add(candidate.key())
                    yield candidate


def _backend_settings(space: SpaceConfig, backend: str) -> Iterator[BackendSettings]:
    """Every settings value of one backend's axes, in the axes' order."""
    if backend == "torch":
        t = space.torch
        for values in itertools.product(
            t.precisions, t.quantizations, t.kv_caches, t.compile, t.attention, t.loops
        ):
            yield TorchSettings(*values)
    elif backend == "ort-genai":
        yield from _genai_settings(space)
    elif backend == "ort-onnx":
        o = space.ort_onnx
        for provider, precision, quantization in itertools.product(
            o.providers, o.precisions, o.quantizations
        ):
            yield OrtOnnxSettings(provider, precision, quantization)
    elif backend == "tensorrt":
        yield from (TensorRTSettings(precision) for precision in space.tensorrt.precisions)


def _genai_settings(space: SpaceConfig) -> Iterator[OrtGenaiSettings]:
    g = space.ort_genai
    for provider, precision in itertools.product(g.providers, g.precisions):
        if precision not in WEIGHT_QUANTIZED:
            options: Iterator[tuple[str, int, int, bool]] = iter([NO_WEIGHT_OPTIONS])
        else:
            # an int8 lm_head is an int4 option: an int8 build has one already
            lm_head = g.int8_lm_head if precision == "int4" else [False]
            options = itertools.product(g.algorithms, g.block_sizes, g.accuracy_levels, lm_head)
        for algorithm, block_size, accuracy_level, int8_lm_head in options:
            # duplicates (repeated axis values) are dropped by _combinations, which dedups by key
            yield OrtGenaiSettings(provider, precision, algorithm, block_size, accuracy_level, int8_lm_head)


def exclusion_reason(candidate: Candidate, target: TargetSpec) -> str | None:
    """Why the target cannot run this candidate, or None when it can. Pure rules, no measuring."""
    if candidate.threads > target.cores:
        return f"threads {candidate.threads} > {target.cores} cores"
    s = candidate.settings
    if isinstance(s, TorchSettings):
        return _torch_rule(s, target)
    if isinstance(s, OrtGenaiSettings):
        return genai_rule(s, target)
    if isinstance(s, OrtOnnxSettings):
        return onnx_rule(s, target)
    if isinstance(s, TensorRTSettings):
        return tensorrt_rule(s, target)
    raise TypeError(f"no exclusion rules for settings of type {type(s).__name__}")


GPU_QUANTIZATIONS = ("int4-weight", "fp8", "fp8-static")
TORCHAO_QUANTIZATIONS = ("int8-dynamic", "int8-weight", "int4-weight", "fp8")  # fp8-static is ours


def _torch_rule(s: TorchSettings, target: TargetSpec) -> str | None:
    cuda = target.is_cuda
    if s.precision == "bf16" and not target.bf16:
        return "target has no native bf16"
    if s.precision == "fp16" and not target.fp16:
        return "fp16 has no fast kernels on this target"
    if s.quantization in GPU_QUANTIZATIONS and not cuda:
        return f"{s.quantization} kernels need a CUDA GPU"
    if s.quantization.startswith("fp8") and not target.fp8:
        return "fp8 needs compute capability >= 8.9"
    if s.quantization in GPU_QUANTIZATIONS and s.precision != "bf16":
        return f"{s.quantization} runs with bf16 activations"
    if s.quantization in TORCHAO_QUANTIZATIONS and importlib.util.find_spec("torchao") is None:
        return f"{s.quantization} needs torchao (pip install torchao)"
    if s.kv_cache.startswith("offloaded") and not cuda:
        return "offloading the KV cache to host memory needs a GPU target"
    kv_backend = s.kv_cache.split("-")[0]
    if kv_backend in ("quanto", "hqq"):
        module = "optimum.quanto" if kv_backend == "quanto" else "hqq"
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"a {kv_backend} KV cache needs {module}"
        if s.compile:
            return "quantized KV caches do not compile"
    if (s.loop == "continuous") != (s.kv_cache == "paged"):
        return "the continuous-batching loop runs on its own paged KV cache, and only it does"
    if s.loop == "continuous" and s.attention not in ("sdpa", "flash_attention_2"):
        return f"continuous batching runs its paged cache through sdpa or flash attention, not {s.attention}"
    if s.compile and s.kv_cache not in ("static", "offloaded_static", "paged"):
        return "torch.compile needs a static KV cache (fixed shapes)"
    if s.loop == "graph":
        if not cuda:
            return "the captured decode loop needs CUDA graphs (a GPU target)"
        if s.kv_cache != "static":
            return "the captured decode loop runs on a static KV cache"
        if s.quantization == "int8-dynamic":
            return "torchao int8-dynamic syncs the host inside its matmul: not capturable in a CUDA graph"
    if s.attention == "flash_attention_2" and (not cuda or importlib.util.find_spec("flash_attn") is None):
        return "flash_attention_2 needs a CUDA GPU with flash-attn installed"
    return None
