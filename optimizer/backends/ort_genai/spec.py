"""What the search knows of the onnxruntime-genai backend: its settings grid, validity rules,
memory footprint and matmul arithmetic. Imports no runtime: `build` loads the backend."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from optimizer.backends.base import (
    PRECISION_BYTES,
    Engine,
    Footprint,
    MovedBytes,
    precision_kind,
    unpadded_stream_reason,
)
from optimizer.backends.installed import missing_genai, missing_genai_engine
from optimizer.backends.ort_genai.settings import (
    GENERATOR_MAX_BATCH,
    NO_WEIGHT_OPTIONS,
    WEIGHT_QUANTIZED,
    OrtGenaiSettings,
)

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec


# The most requests onnxruntime-genai's Engine runs at once on a build without a paged KV cache
# (every build here): a constant of its static batch scheduler (0.18; the config's
# engine.static_batching.max_batch_size does not change it).
ENGINE_STATIC_BATCH = 4


class OrtGenaiSpec:
    name = OrtGenaiSettings.BACKEND
    settings_type = OrtGenaiSettings

    def settings_for(self, space: SpaceConfig) -> Iterator[OrtGenaiSettings]:
        g = space.ort_genai
        for provider, precision, spinning in itertools.product(g.providers, g.precisions, g.spinning):
            if precision not in WEIGHT_QUANTIZED:
                options: Iterator[tuple[str, int, int, bool]] = iter([NO_WEIGHT_OPTIONS])
            else:
                # an int8 lm_head is an int4 option: an int8 build has one already
                lm_head = g.int8_lm_head if precision == "int4" else [False]
                options = itertools.product(g.algorithms, g.block_sizes, g.accuracy_levels, lm_head)
            for algorithm, block_size, accuracy_level, int8_lm_head in options:
                # duplicates (repeated axis values) are dropped by the space, which dedups by key
                yield OrtGenaiSettings(
                    provider, precision, algorithm, block_size, accuracy_level, int8_lm_head, spinning
                )

    def exclusion_reason(self, settings: OrtGenaiSettings, target: TargetSpec) -> str | None:
        return genai_rule(settings, target)

    def workload_reason(self, settings: OrtGenaiSettings, batch_size: int, serving: bool) -> str | None:
        """A stream goes to genai's Engine API, `batch_size` requests at most at once; without it
        (onnxruntime-genai < 0.18) the Generator pads no prompts: one request at a time. Offline
        batches go to one Generator, at most GENERATOR_MAX_BATCH sequences."""
        if not serving:
            if batch_size > GENERATOR_MAX_BATCH:
                return (
                    f"onnxruntime-genai's Generator runs at most {GENERATOR_MAX_BATCH} sequences at "
                    f"once: it refuses batch {batch_size}"
                )
            return None
        if batch_size == 1:
            return None
        if (missing := missing_genai_engine()) is not None:
            return f"{missing}: {unpadded_stream_reason(batch_size, serving)}"
        if batch_size > ENGINE_STATIC_BATCH:
            return (
                f"onnxruntime-genai's Engine serves a stream in static batches of at most {ENGINE_STATIC_BATCH} "
                "requests on a build without a paged KV cache (its PagedAttention builds are CUDA "
                f"fp16/bf16 only): batch {batch_size} would run as {ENGINE_STATIC_BATCH}"
            )
        return None

    def footprint(self, settings: OrtGenaiSettings, num_layers: int) -> Footprint:
        # the builder keeps fp32 activations and KV for int4/int8 on CPU, fp16 on CUDA
        act = 4.0 if settings.precision == "fp32" or settings.provider == "cpu" else 2.0
        if settings.precision not in WEIGHT_QUANTIZED:
            # a tied model's build writes lm_head alone and feeds the embedding's Gather from its
            # Transpose, which ONNX Runtime folds into a second matrix at load (measured on CPU,
            # fp32: hidden 512, vocab 49152 added 208 MiB resident for a 96 MiB matrix)
            return Footprint(
                PRECISION_BYTES[settings.precision], act, act, prompt_logits=True, tied_holds="both"
            )
        scale = 4 / settings.block_size  # one fp32 scale per block (fp16 on CUDA: counted at fp32)
        weight = (0.5 if settings.precision == "int4" else 1.0) + scale
        head = 1.0 + scale if settings.int8_lm_head else weight
        # MatMulNBits takes lm_head, not the embedding's Gather, which keeps the activation dtype:
        # a tied int8 build holds both matrices. A tied int4 build's GatherBlockQuantized reads
        # lm_head's quantized matrix instead (a tied int4 + int8 lm_head build reads one it lacks
        # and does not load in genai 0.18).
        tied: Literal["lm_head", "both"] = "lm_head" if settings.precision == "int4" else "both"
        return Footprint(
            weight, act, act, prompt_logits=True, embedding_bytes=act, output_bytes=head, tied_holds=tied
        )

    def moved_bytes(self, settings: OrtGenaiSettings, num_layers: int) -> MovedBytes:
        """Every weight at the body's bits (an int8 lm_head and the block scales only add), and the
        KV at the activation dtype."""
        fp = self.footprint(settings, num_layers)
        weight = {"int4": 0.5, "int8": 1.0}.get(settings.precision, fp.weight_bytes)
        return MovedBytes(weight, fp.kv_bytes)

    def matmul_kind(self, settings: OrtGenaiSettings) -> str:
        """genai's int4/int8 MatMuls compute in int8."""
        return precision_kind("int8" if settings.precision in WEIGHT_QUANTIZED else settings.precision)

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        from optimizer.backends.ort_genai.backend import OrtGenaiBackend  # onnxruntime-genai loads here

        return OrtGenaiBackend().build(model, candidate, target, workdir)


SPEC = OrtGenaiSpec()


def genai_rule(s: OrtGenaiSettings, target: TargetSpec) -> str | None:
    if s.provider == "cuda" and not target.is_cuda:
        return "the CUDA execution provider needs a GPU target"
    if s.provider == "cpu" and target.is_cuda:
        return "a CPU execution provider on a GPU target measures the wrong device"
    if s.precision in ("fp16", "bf16") and s.provider == "cpu":
        return f"the model builder makes {s.precision} models for GPUs only"
    if s.precision == "bf16" and not target.bf16:
        return "target has no native bf16"
    return missing_genai(s.provider)
