"""What measuring needs, prepared once per process: the resolved model, the detected target, an
energy meter, the workload's prompts and the quality text, as token ids.

`search.evaluate.Evaluator.for_setup` measures candidates with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.config import ModelConfig, QualityConfig, TargetConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.energy import EnergyMeter, make_meter
from optimizer.measure.stream import RequestStream, TextTokens, generate_stream, read_trace, window_bounds
from optimizer.measure.text import (
    load_text,
    quality_windows,
    sequence_start,
    token_windows,
    workload_windows,
)
from optimizer.measure.workload import Workload
from optimizer.model import ModelSpec, resolve_model
from optimizer.target import TargetSpec, detect_target

if TYPE_CHECKING:
    import torch

# Real text a generated stream's prompts are cut from (its conversations resend what they took).
STREAM_TEXT_TOKENS = 60_000


@dataclass
class MeasurementSetup:
    """What measuring needs, shared by `optimize`, the search workers, `verify` and the benchmarks."""

    model: ModelSpec
    target: TargetSpec
    meter: EnergyMeter
    workload: Workload
    quality_tokens: torch.Tensor  # [sequences, tokens]
    text_sha256: str
    workload_cfg: WorkloadConfig
    quality_cfg: QualityConfig
    cache_dir: Path
    # serving workloads: the request stream at each offered load (requests/s)
    streams: dict[float, RequestStream] | None = None

    @property
    def stream(self) -> RequestStream | None:
        """The stream at the rate the recipe is selected for; None for offline workloads."""
        return self.streams[selection_rate(self.workload_cfg, self.streams)] if self.streams else None


def selection_rate(cfg: WorkloadConfig, streams: dict[float, RequestStream]) -> float:
    """The offered load (requests/s) selection happens at: `workload.rate`, or a trace's own rate
    (its one stream's), since a trace is replayed at its own times whatever `workload.rate` says."""
    return next(iter(streams)) if cfg.trace else cfg.rate


def prepare_measurement(
    model_cfg: ModelConfig,
    target_cfg: TargetConfig,
    workload_cfg: WorkloadConfig,
    quality_cfg: QualityConfig,
    cache_dir: Path,
    prompt_pool: int,
    convert_gguf: bool = True,
) -> MeasurementSetup:
    """Without `convert_gguf` (every engine the run builds reads a GGUF itself: llama.cpp, with the
    GGUF as quality reference) a GGUF model is tokenized from its own file, never de-quantized."""
    import torch

    _quiet_libraries(cache_dir)
    model = resolve_model(model_cfg, cache_dir, convert_gguf)
    if quality_cfg.reference == "gguf" and model.format != "gguf":
        raise UserError(
            "quality.reference",
            f"is gguf, but the model is a {model.format} model, not a GGUF file",
            "use quality.reference=fp32, or point model= at a .gguf file",
        )
    context = model.shape.context_length
    check_context(workload_cfg, quality_cfg, context)
    target = detect_target(target_cfg)
    tokenizer = _tokenizer(model)
    text = load_text(quality_cfg.text)
    start = sequence_start(tokenizer)  # every prompt and quality window begins like a real sequence
    prompts = workload_windows(tokenizer, text, workload_cfg.prompt_tokens, prompt_pool, start)
    quality = quality_windows(tokenizer, text, quality_cfg.seq_tokens, quality_cfg.num_sequences, start)
    streams = _streams(workload_cfg, tokenizer, text.workload, context) if workload_cfg.serving else None
    return MeasurementSetup(
        model=model,
        target=target,
        meter=make_meter(target),
        workload=Workload(torch.tensor(prompts), workload_cfg.max_new_tokens),
        quality_tokens=torch.tensor(quality),
        text_sha256=text.sha256,
        workload_cfg=workload_cfg,
        quality_cfg=quality_cfg,
        cache_dir=cache_dir,
        streams=streams,
    )


def _tokenizer(model: ModelSpec) -> Any:
    """The model's tokenizer: from its Hugging Face directory, or from a GGUF file's own metadata."""
    from transformers import AutoTokenizer

    from optimizer.model_files import check_tokenizer

    if model.path.is_file():  # a GGUF left as it is
        return AutoTokenizer.from_pretrained(str(model.path.parent), gguf_file=model.path.name)
    check_tokenizer(model.path)  # transformers' own error for none is about sentencepiece
    return AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=model.trust_remote_code)


def _streams(
    cfg: WorkloadConfig, tokenizer: Any, paragraphs: list[str], context: int | None
) -> dict[float, RequestStream]:
    """The serving stream at every offered load: generated (same seed, arrivals scaled to each
    rate) or a trace, replayed at its own times (a trace has one rate: its own)."""
    (ids,) = token_windows(tokenizer, paragraphs, STREAM_TEXT_TOKENS, 1, "quality.text")
    start = sequence_start(tokenizer)
    text = TextTokens(ids, start, seed=cfg.seed)
    if cfg.trace:
        if cfg.rates:
            raise UserError(
                "workload.rates", "a trace is replayed at its own arrival times", "drop workload.rates"
            )
        trace = read_trace(Path(cfg.trace).expanduser(), tokenizer, text, context)
        _check_steady_state(trace, cfg)
        # keyed (and so measured and recorded) at its own offered rate, to 6 digits like the recipe's
        return {float(f"{trace.offered_rate:.6g}"): trace}
    # a text cursor of its own per rate: the same prompts at every load, and the stream at
    # workload.rate (whose hash keys the results) whatever other rates are listed
    return {
        rate: generate_stream(cfg, TextTokens(ids, start, seed=cfg.seed), rate) for rate in cfg.load_rates()
    }


def _check_steady_state(trace: RequestStream, cfg: WorkloadConfig) -> None:
    """A trace must leave requests between its warm-up and its drain (the workload's own count is
    checked with the config), arriving over some time: otherwise the energy window, which opens
    and closes at arrivals, would open and close at once."""
    requests = len(trace.requests)
    if not cfg.leaves_steady_state(requests):
        raise UserError(
            "workload.trace",
            f"has {requests} requests: none left for a steady state after {cfg.warmup_requests} warm-up "
            f"and {cfg.drain_requests} drain requests",
            "record a longer trace, or lower workload.warmup_requests / workload.drain_requests",
        )
    first, last = window_bounds(requests, cfg.warmup_requests, cfg.drain_requests)
    opens, closes = trace.requests[first].arrival_seconds, trace.requests[last].arrival_seconds
    if closes <= opens:
        raise UserError(
            "workload.trace",
            f"requests {first} to {last} (after the warm-up, before the drain) all arrive at {opens:g} s: "
            "the energy window, from the first of them to the last, would last no time",
            "record a trace whose requests arrive over time, or lower workload.warmup_requests / "
            "workload.drain_requests",
        )


def check_context(workload: WorkloadConfig, quality: QualityConfig, context: int | None) -> None:
    """Requests or quality windows past the model's positions: found now, not after minutes of
    measuring a model that computes past what it was trained for (a trace is checked per line)."""
    if context is None:
        return
    longest = workload.longest_request_tokens()
    if not workload.trace and longest > context:
        field = "workload.prompt_lengths.max" if workload.serving else "workload.prompt_tokens"
        turns = f" over {workload.turns} turns" if workload.serving and workload.turns > 1 else ""
        raise UserError(
            field,
            f"the longest request is {longest} prompt and output tokens{turns}, over the model's context of {context}",
            "shorten the prompts or the outputs (workload.max_new_tokens, workload.output_lengths.max)",
        )
    if quality.seq_tokens > context:
        raise UserError(
            "quality.seq_tokens",
            f"is {quality.seq_tokens}, over the model's context of {context}",
            f"at most {context}",
        )


def _quiet_libraries(cache_dir: Path) -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("torchao").setLevel(logging.ERROR)  # warns about CUDA kernels on CPU machines
    # torchao registers its Enums as pytree constants, which torch >= 2.13 supports natively: a
    # warning per Enum at import, nothing a user can act on
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
