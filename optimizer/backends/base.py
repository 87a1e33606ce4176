"""The protocols every backend implements (Engine, Backend, BackendSpec), the records they return
(Generation, Footprint) and helpers the backends share.

This module imports no backend: the table of backends is `registry.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from optimizer.errors import UserError

if TYPE_CHECKING:
    import torch

    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.model_files import ModelShape
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec


@dataclass(frozen=True)
class Generation:
    """One batch of requests generated together. Times are wall seconds on the host clock.

    A lockstep engine prefills and decodes every request of the batch together, so each request's
    TTFT is the prefill time and its TPOT the mean decode step. An engine that schedules requests
    on its own (continuous batching) gives each request's TTFT and TPOT in `request_latencies`.
    """

    batch_size: int
    new_tokens: int  # per request (EOS is ignored so every request does the same work)
    ttft_seconds: float
    total_seconds: float
    token_ids: torch.Tensor | None = None  # [batch, new_tokens] on the CPU, when the engine returns them
    # (ttft_seconds, tpot_seconds) per request, in row order; None: every request has the batch's
    request_latencies: tuple[tuple[float, float], ...] | None = None
    # host perf_counter time at which each decode step's tokens were ready (lockstep engines that
    # stamp their steps); None: not recorded
    token_times: tuple[float, ...] | None = None

    @property
    def output_tokens(self) -> int:
        return self.batch_size * self.new_tokens

    @property
    def tpot_seconds(self) -> float:
        """Mean time per output token after the first."""
        return (self.total_seconds - self.ttft_seconds) / max(self.new_tokens - 1, 1)

    def latencies(self) -> list[tuple[float, float]]:
        """(TTFT, TPOT) seconds of every request of the batch."""
        if self.request_latencies is not None:
            return list(self.request_latencies)
        return [(self.ttft_seconds, self.tpot_seconds)] * self.batch_size


class Engine(Protocol):
    """A built candidate, ready to serve."""

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        """Greedy-decode exactly `max_new_tokens` for each row of `prompt_ids` [batch, tokens]."""
        ...

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, tokens, vocab] (float32, CPU) for quality measurement."""
        ...

    def close(self) -> None:
        """Release memory (device memory included) held by the engine."""
        ...


class Backend(Protocol):
    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine: ...


@dataclass(frozen=True)
class Footprint:
    """Bytes per element of what a backend keeps in memory for one candidate."""

    weight_bytes: float  # per parameter
    activation_bytes: float
    kv_bytes: float  # per cached K or V element
    prompt_logits: bool = False  # prefill returns logits for every prompt token, not only the last
    kv_on_device_fraction: float = 1.0
    kv_cache_tokens: int = 0  # a KV cache of this many tokens whatever the batch; 0: sized by the batch
    embedding_bytes: float | None = None  # per embedding parameter where a scheme leaves it alone
    # per parameter of an lm_head held apart from the embedding where a scheme leaves it alone
    # (None: weight_bytes); an ONNX quantizer keeps the embedding (a Gather) but quantizes lm_head
    output_bytes: float | None = None
    # what a build holds of a tied embedding and lm_head (untied: both, at their own widths): one
    # matrix at embedding_bytes; one at output_bytes (an embedding read from the quantized lm_head);
    # or both (an export whose constant folding turns lm_head's Transpose into an initializer)
    tied_holds: Literal["embedding", "lm_head", "both"] = "embedding"
    kv_copies: int = 1  # the batch's KV held this many times over (a prefix store as large as it)
    kv_token_granule: int = 1  # each sequence's KV cells come in multiples of this many tokens
    # per sequence, the newest tokens a quantized cache keeps at activation_bytes, not kv_bytes
    kv_full_tokens: int = 0
    # per parameter while a build loads the model, where it quantizes only after loading it all
    # (None: as held); the device holds every weight at this width first
    load_weight_bytes: float | None = None


@dataclass(frozen=True)
class MovedBytes:
    """Lower bounds of what a decode step reads, per element, for the roofline (an upper bound of
    tokens/J must never overstate bytes). `Footprint` is the memory check's, which must never
    understate them: the two differ by scales, fp32 I/O buffers and kept-precision layers."""

    weight_bytes: float  # per parameter
    kv_bytes: float  # per cached K or V element
    kv_on_device_fraction: float = 1.0


S = TypeVar("S")


class BackendSpec(Protocol[S]):
    """What the space, the prefilter, the roofline and the report know of one backend, asked by
    its settings type. Importing a spec imports no runtime: `build` imports the backend's code."""

    name: str  # the settings' BACKEND, as written in configs, recipes and candidate keys
    settings_type: type[S]

    def settings_for(self, space: SpaceConfig) -> Iterator[S]:
        """Every settings value the space's axes of this backend ask for, in the axes' order."""
        ...

    def exclusion_reason(self, settings: S, target: TargetSpec) -> str | None:
        """Why the target cannot run these settings, or None when it can. Pure rules, no measuring."""
        ...

    def workload_reason(self, settings: S, batch_size: int, serving: bool) -> str | None:
        """Why these settings cannot run the workload's kind (`serving`: a request stream of
        mixed lengths; else offline batches of equal prompts), or None when they can."""
        ...

    def footprint(self, settings: S, num_layers: int) -> Footprint:
        """Bytes per weight, activation and KV element that a build of these settings holds."""
        ...

    def moved_bytes(self, settings: S, num_layers: int) -> MovedBytes:
        """The least bytes per weight and per KV element a decode step of these settings reads."""
        ...

    def matmul_kind(self, settings: S) -> str:
        """The fastest arithmetic the matmuls can use: fp32, reduced (bf16/fp16), int8 or fp8."""
        ...

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        """Build the candidate (whose settings are of `settings_type`) into an engine."""
        ...


@runtime_checkable
class ModelRules(Protocol):
    """A spec whose backend cannot load every model format (e.g. llama.cpp: GGUF files only)."""

    def model_reason(self, settings: Any, model_format: str) -> str | None:
        """Why these settings cannot run a model of `model_format` (gguf, hf-dir, hub), or None."""
        ...


@runtime_checkable
class ShapeWidths(Protocol):
    """A spec whose widths depend on what the model's files hold, not on its settings alone
    (llama.cpp loading a GGUF as shipped): the prefilter and the roofline ask it through
    `shape_footprint` and `shape_moved_bytes`."""

    def footprint_for_shape(self, settings: Any, shape: ModelShape) -> Footprint:
        """`footprint`, at the widths the model's own files give where the settings keep them."""
        ...

    def moved_bytes_for_shape(self, settings: Any, shape: ModelShape) -> MovedBytes:
        """`moved_bytes`, at the widths the model's own files give where the settings keep them."""
        ...


def shape_footprint(spec: BackendSpec[Any], settings: Any, shape: ModelShape) -> Footprint:
    """What a build of these settings holds per element, for a model of this shape."""
    if isinstance(spec, ShapeWidths):
        return spec.footprint_for_shape(settings, shape)
    return spec.footprint(settings, shape.num_layers)


def shape_moved_bytes(spec: BackendSpec[Any], settings: Any, shape: ModelShape) -> MovedBytes:
    """The least a decode step of these settings reads per element, for a model of this shape."""
    if isinstance(spec, ShapeWidths):
        return spec.moved_bytes_for_shape(settings, shape)
    return spec.moved_bytes(settings, shape.num_layers)


@runtime_checkable
class RowRules(Protocol):
    """A spec whose engines bound a row's tokens (TensorRT's optimization profiles)."""

    def row_reason(self, settings: Any, tokens: int) -> str | None:
        """Why these settings cannot run rows of `tokens` tokens (prompt + generated), or None."""
        ...


PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}


def precision_kind(precision: str) -> str:
    """The matmul kind of a compute precision: fp32, int8, or reduced (bf16, fp16)."""
    return {"fp32": "fp32", "int8": "int8"}.get(precision, "reduced")


def unpadded_stream_reason(batch_size: int, serving: bool) -> str | None:
    """A lockstep engine that cannot pad prompts serves a request stream one request at a time."""
    if serving and batch_size > 1:
        return "pads no prompts: serves a request stream one request at a time (batch 1 only)"
    return None


def check_choices(settings: Any, allowed: Mapping[str, Sequence[object]]) -> None:
    """Raise a UserError naming the first field whose value is not one of its allowed values."""
    for name, values in allowed.items():
        value = getattr(settings, name)
        # by type and value: "false", 0 or True must not pass as False, 4 or 32
        if not any(type(value) is type(v) and value == v for v in values):
            raise UserError(f"settings.{name}", f"unknown value {value!r}", f"use one of {list(values)}")


def load_check(engine: Engine, error: type[Exception] = RuntimeError) -> None:
    """Two tokens from a two-token prompt: a model that loads may still fail when it runs.
    On any failure the engine is closed and the exception propagates; generation without
    token ids of shape (1, 2) raises `error`."""
    import torch

    try:
        generation = engine.generate(torch.tensor([[1, 2]]), 2)
        if generation.token_ids is None or tuple(generation.token_ids.shape) != (1, 2):
            shape = None if generation.token_ids is None else tuple(generation.token_ids.shape)
            raise error(f"generation returned no tokens (token ids {shape}, expected (1, 2))")
    except Exception:
        engine.close()
        raise
