"""Backend and Engine protocols, the Generation record, and the registry keyed by settings type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from optimizer.onnx_settings import OrtGenaiSettings, OrtOnnxSettings, TensorRTSettings
from optimizer.space import BackendSettings, Candidate, TorchSettings

if TYPE_CHECKING:
    import torch

    from optimizer.model import ModelSpec
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


def _torch_backend() -> Backend:
    from optimizer.backends.torch import TorchBackend

    return TorchBackend()


def _ort_genai_backend() -> Backend:
    from optimizer.backends.ort_genai import OrtGenaiBackend

    return OrtGenaiBackend()


def _ort_onnx_backend() -> Backend:
    from optimizer.backends.ort_onnx import OrtOnnxBackend

    return OrtOnnxBackend()


def _tensorrt_backend() -> Backend:
    from optimizer.backends.tensorrt import TensorRTBackend

    return TensorRTBackend()


# Keyed by settings type so that a type checker follows the dispatch; backends import their
# heavy dependencies only when built.
BACKENDS: dict[type[BackendSettings], Callable[[], Backend]] = {
    TorchSettings: _torch_backend,
    OrtGenaiSettings: _ort_genai_backend,
    OrtOnnxSettings: _ort_onnx_backend,
    TensorRTSettings: _tensorrt_backend,
}


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


def backend_for(settings: BackendSettings) -> Backend:
    return BACKENDS[type(settings)]()


def build_engine(model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
    return backend_for(candidate.settings).build(model, candidate, target, workdir)
