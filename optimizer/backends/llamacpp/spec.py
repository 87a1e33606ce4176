"""What the search knows of the llama.cpp backend: its settings grid, validity rules, memory
footprint and matmul arithmetic. Imports no llama_cpp: `build` loads it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends import installed
from optimizer.backends.base import Engine, Footprint, MovedBytes
from optimizer.backends.llamacpp.settings import AS_SHIPPED, CONTEXT_GRANULE, LlamaCppSettings
from optimizer.backends.llamacpp.weights import CONVERTER_ENV, hf_converter
from optimizer.backends.prefixes import OFFLINE_REASON

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.model_files import ModelShape
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

# The least bits per weight a decode step of each type reads (the roofline's lower bound): the
# type's own block layout; k-quant mixes (_M, _S) and llama.cpp's fallbacks for rows that are not
# a multiple of 256 only add. A GGUF as shipped may hold any type: the lowest (IQ1_S, 1.56) where
# the shape lacks the file's own bytes (`moved_bytes_for_shape`).
MOVED_BITS = {
    AS_SHIPPED: 1.56,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.5625,
    "Q5_K_M": 5.5,
    "Q5_K_S": 5.5,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q4_K_M": 4.5,
    "Q4_K_S": 4.5,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_M": 3.4375,
    "Q2_K": 2.625,  # 2 fp16 scales + 16 + 64 bytes per 256 weights
}
# The most bits per weight a build holds (the memory check's upper bound): a quantized type's
# mixes and fallbacks stay at or below Q8_0 (8.5); a GGUF as shipped whose own bytes the shape lacks
# is taken as f16 (an F32 GGUF, rare beyond tiny models, would be understated).
FOOTPRINT_BITS = {t: 16.0 if t in (AS_SHIPPED, "F16", "BF16") else 8.5 for t in MOVED_BITS}
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # per element, block scales included
# llama.cpp's most sequences per context (LLAMA_MAX_SEQ)
MAX_SEQUENCES = 256


class LlamaCppSpec:
    name = LlamaCppSettings.BACKEND
    settings_type = LlamaCppSettings
    serves_gguf = True  # loads a GGUF model's own file: rebuilding its recipe converts nothing

    def settings_for(self, space: SpaceConfig) -> Iterator[LlamaCppSettings]:
        a = space.llamacpp
        for values in itertools.product(
            a.weight_types, a.kv_types, a.flash_attention, a.n_batch, a.n_ubatch, a.prefix_sharing
        ):
            yield LlamaCppSettings(*values)

    def exclusion_reason(self, settings: LlamaCppSettings, target: TargetSpec) -> str | None:
        return llamacpp_rule(settings, target.is_cuda)

    def model_reason(self, settings: LlamaCppSettings, model_format: str) -> str | None:
        """llama.cpp loads GGUF files: another model needs llama.cpp's converter."""
        if model_format == "gguf" or hf_converter() is not None:
            return None
        return (
            f"llama.cpp loads GGUF files and the model is a Hugging Face directory ({model_format}) with no "
            f"converter available: set {CONVERTER_ENV} to llama.cpp's convert_hf_to_gguf.py, or pass model=<file>.gguf"
        )

    def workload_reason(self, settings: LlamaCppSettings, batch_size: int, serving: bool) -> str | None:
        if batch_size > MAX_SEQUENCES:
            return f"llama.cpp decodes at most {MAX_SEQUENCES} sequences at once (batch {batch_size})"
        if batch_size > settings.n_batch:
            # every step decodes one token per sequence in one llama_decode of <= n_batch tokens;
            # a context with more sequences aborts the process (GGML_ASSERT n_outputs_max)
            return (
                f"batch {batch_size} > n_batch {settings.n_batch}: llama.cpp decodes one token of every "
                f"sequence in one batch of at most n_batch tokens (raise space.llamacpp.n_batch to >= "
                f"{batch_size}, or drop batch size {batch_size})"
            )
        if settings.prefix_sharing and not serving:
            return OFFLINE_REASON
        return None

    def footprint(self, settings: LlamaCppSettings, num_layers: int) -> Footprint:
        # activations in fp32; only the last prompt token's logits come back from a prefill; each
        # sequence's cells are a whole number of granules (the engine's context)
        bits = FOOTPRINT_BITS[settings.weight_type]
        return Footprint(bits / 8, 4.0, KV_BYTES[settings.kv_type], kv_token_granule=CONTEXT_GRANULE)

    def moved_bytes(self, settings: LlamaCppSettings, num_layers: int) -> MovedBytes:
        return MovedBytes(MOVED_BITS[settings.weight_type] / 8, KV_BYTES[settings.kv_type])

    def footprint_for_shape(self, settings: LlamaCppSettings, shape: ModelShape) -> Footprint:
        """A GGUF loaded as shipped holds its own tensors' bytes: its average width per parameter
        (the shape counts the file's tensors); without them, the f16 of `footprint`."""
        fp = self.footprint(settings, shape.num_layers)
        if settings.requantized or shape.gguf is None:
            return fp
        return replace(fp, weight_bytes=shape.gguf.bits_per_weight / 8)

    def moved_bytes_for_shape(self, settings: LlamaCppSettings, shape: ModelShape) -> MovedBytes:
        """A GGUF loaded as shipped: the least bytes a decode step reads of its tensors, over the
        roofline's weights (all but one vocabulary matrix); without them, the IQ1_S of `moved_bytes`."""
        moved = self.moved_bytes(settings, shape.num_layers)
        body = shape.num_parameters - shape.vocab_size * shape.hidden_size
        if settings.requantized or shape.gguf is None or body <= 0:
            return moved
        return replace(moved, weight_bytes=shape.gguf.read_bytes / body)

    def matmul_kind(self, settings: LlamaCppSettings) -> str:
        """Quantized weights multiply with int8-quantized activations (llama.cpp's vec_dot kernels)."""
        return "reduced" if settings.weight_type in ("F16", "BF16") else "int8"

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        from optimizer.backends.llamacpp.backend import build  # llama_cpp loads here

        return build(model, candidate, target, workdir)


SPEC = LlamaCppSpec()


def llamacpp_rule(s: LlamaCppSettings, cuda: bool) -> str | None:
    if (reason := installed.missing_llamacpp(cuda)) is not None:
        return reason
    if s.requantized and s.weight_type not in installed.llamacpp_ftypes():
        return f"the installed llama-cpp-python's quantizer has no {s.weight_type} (LLAMA_FTYPE_MOSTLY_{s.weight_type})"
    if s.kv_type != "f16" and not s.flash_attention:
        return f"llama.cpp quantizes the V cache ({s.kv_type}) only with flash attention"
    if s.n_ubatch > s.n_batch:
        return f"n_ubatch {s.n_ubatch} > n_batch {s.n_batch}: a micro-batch is part of one llama_decode batch"
    return None
