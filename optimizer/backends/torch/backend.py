"""PyTorch backend: HF transformers `generate` with the candidate's dtype, quantization, KV cache,
compile and attention settings, on the target's device."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optimizer.backends.base import Generation
from optimizer.backends.torch import decode_attention
from optimizer.backends.torch.compiling import cache_argument, place_inductor_cache, room_to_recompile
from optimizer.backends.torch.fp8_static import excluded_weights, quantize_fp8_static
from optimizer.backends.torch.graph_loop import GraphDecoder
from optimizer.backends.torch.settings import INT4_GROUP_SIZE, TorchSettings
from optimizer.backends.torch.slot_server import SlotEngine
from optimizer.measure.text import calibration_windows
from optimizer.model import ModelSpec
from optimizer.target import TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Tokens scored per forward when the KV cache is quantized, so that later tokens attend to the
# quantized cache of earlier ones, as they do while generating.
QUANTIZED_KV_SCORE_CHUNK = 16


# Static fp8 activation scales: prefill forwards over this many workload-text windows.
FP8_CALIBRATION_SEQUENCES = 16
FP8_CALIBRATION_TOKENS = 128


class TorchBackend:
    def build(
        self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
    ) -> TorchEngine | SlotEngine:
        settings = candidate.settings
        assert isinstance(settings, TorchSettings)
        if not target.is_cuda and candidate.threads:
            torch.set_num_threads(candidate.threads)
        if settings.compile:
            # Compiled kernels land in the run's cache, not in /tmp of whoever runs it next.
            place_inductor_cache(workdir / "inductor")
        hf_model = load_hf_model(model, settings.precision, settings.attention, target.device)
        quantize_weights(hf_model, settings, model)
        if settings.loop == "slots":
            return SlotEngine(
                hf_model,
                candidate.batch_size,
                target.device,
                compiled=settings.compile,
                compile_layers=settings.compile_layers,
                step_interval_seconds=settings.step_interval_ms / 1000,
                prefix_sharing=settings.prefix_sharing,
            )
        return TorchEngine(hf_model, settings, target.device)


def load_hf_model(model: ModelSpec, precision: str, attention: str, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    if attention == decode_attention.NAME:
        decode_attention.register()
    hf_model: Any = AutoModelForCausalLM.from_pretrained(
        str(model.path),
        dtype=DTYPES[precision],
        attn_implementation=attention,
        trust_remote_code=model.trust_remote_code,
    )
    return hf_model.to(device).eval()


def quantize_weights(hf_model: Any, settings: TorchSettings, model: ModelSpec) -> None:
    """Swap Linear weights for quantized ones, in place."""
    if settings.quantization == "none":
        return
    if settings.quantization == "fp8-static":
        windows = calibration_windows(
            model.path, model.trust_remote_code, FP8_CALIBRATION_TOKENS, FP8_CALIBRATION_SEQUENCES
        )
        device = next(hf_model.parameters()).device
        report = quantize_fp8_static(hf_model, torch.tensor(windows, device=device))
        log.info("fp8-static: %s", report)
        return
    # torchao, not torch.ao.quantization.quantize_dynamic: the latter scales activations per
    # tensor, which outlier channels ruin (SmolLM2: perplexity +627%); torchao scales per token.
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    configs: dict[str, Any] = {
        "int8-dynamic": Int8DynamicActivationInt8WeightConfig(),
        "int8-weight": Int8WeightOnlyConfig(),
        # tinygemm packing runs on torch's own int4 kernel (the default "plain" format needs mslk)
        "int4-weight": Int4WeightOnlyConfig(
            group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d"
        ),
        "fp8": Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
    }
    if settings.quantization == "int4-weight":
        refuse_ungrouped_int4(hf_model)
    # torchao's default filter takes every Linear, lm_head too: that would untie it from the
    # embedding (a quantized copy beside the 16-bit one) and quantize the output projection
    chosen = {id(module) for module in quantized_linears(hf_model).values()}
    quantize_(hf_model, configs[settings.quantization], filter_fn=lambda module, _name: id(module) in chosen)


def quantized_linears(hf_model: Any) -> dict[str, nn.Linear]:
    """The Linear layers a torchao quantization replaces, by name: all but the output projection."""
    kept = excluded_weights(hf_model)
    return {
        name: module
        for name, module in hf_model.named_modules()
        if isinstance(module, nn.Linear) and id(module.weight) not in kept
    }


def int4_ungrouped_linears(hf_model: Any) -> list[str]:
    """The Linear layers int4-weight would quantize whose inputs are no whole number of groups
    (torchao's own test: the weight as this process holds it, a tensor-parallel shard too)."""
    return [
        name
        for name, module in quantized_linears(hf_model).items()
        if module.weight.shape[-1] % INT4_GROUP_SIZE
    ]


def refuse_ungrouped_int4(hf_model: Any) -> None:
    """torchao returns such a layer's weight unquantized and says so only at INFO: the candidate
    would run those layers in 16-bit under an int4 label that the memory fit and roofline count
    at 4 bits."""
    ungrouped = int4_ungrouped_linears(hf_model)
    if not ungrouped:
        return
    inputs = hf_model.get_submodule(ungrouped[0]).weight.shape[-1]
    raise ValueError(
        f"int4-weight: {ungrouped[0]} has in_features={inputs}, no multiple of the "
        f"{INT4_GROUP_SIZE}-input groups torchao quantizes; {len(ungrouped)} of "
        f"{len(quantized_linears(hf_model))} Linear layers would stay 16-bit; "
        "use int8-weight or fp8 for this model"
    )


class _TokenClock:
    """A generate() streamer that only timestamps: the first put() is the prompt, then one per step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        self.stamps.append(time.perf_counter())


def scoring_cache(kv_cache: str, config: Any) -> Any:
    """A quantized cache for chunked scoring that, like `generate`'s after its prefill, holds the
    context quantized: the residual kept in full precision is one chunk, not transformers'
    default 128 tokens (which would leave a 128-token quality window almost unquantized)."""
    from transformers import QuantizedCache

    backend, bits = kv_cache.split("-")
    return QuantizedCache(
        backend=backend, config=config, nbits=int(bits), residual_length=QUANTIZED_KV_SCORE_CHUNK
    )


@contextmanager
def _checkpoint_defaults_left_out(hf_model: Any) -> Iterator[None]:
    """generate() fills each field its config leaves unset from `hf_model.generation_config`, the
    checkpoint's generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.1; others
    no_repeat_ngram_size, suppress_tokens, eos_token_id, ...). An empty one in its place for the
    call leaves transformers' neutral defaults instead."""
    from transformers import GenerationConfig

    kept = hf_model.generation_config
    hf_model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf_model.generation_config = kept


def check_plain_greedy(hf_model: Any, config: Any, ids: torch.Tensor) -> None:
    """Raise unless generate() would decode `config` as plain greedy: no logits processor (it would
    move the argmax) and no EOS (it would end rows early). Builds what generate() builds from it,
    with the same (private) transformers steps, and runs no forward."""
    prepared, _ = hf_model._prepare_generation_config(config)
    hf_model._prepare_special_tokens(prepared, True, device=ids.device)
    processors = hf_model._get_logits_processor(
        prepared, input_ids_seq_length=ids.shape[1], device=ids.device
    )
    if len(processors):
        names = ", ".join(type(p).__name__ for p in processors)
        raise RuntimeError(f"generate would process logits ({names}); greedy decoding must not")
    if prepared._eos_token_tensor is not None:
        raise RuntimeError(f"generate would stop at EOS {prepared.eos_token_id}; rows must not end early")


class TorchEngine:
    def __init__(self, hf_model: Any, settings: TorchSettings, device: str) -> None:
        self.model = hf_model
        self.settings = settings
        self.device = torch.device(device)
        self._decoder: GraphDecoder | None = None  # loop=graph: one captured shape at a time
        self._checked_plain_greedy = False  # loop=hf: check_plain_greedy, on the first generate

    def _generation_config(self, max_new_tokens: int) -> Any:
        from transformers import CompileConfig, GenerationConfig

        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.kv_cache.startswith(("quanto", "hqq")):
            backend, bits = s.kv_cache.split("-")
            kwargs.update(
                cache_implementation="quantized", cache_config={"backend": backend, "nbits": int(bits)}
            )
        elif s.kv_cache != "dynamic":
            kwargs["cache_implementation"] = s.kv_cache
        if s.compile:
            kwargs["compile_config"] = CompileConfig(fullgraph=False)
            kwargs["compile_config"]._compile_all_devices = True  # HF compiles only on accelerators otherwise
        else:
            kwargs["disable_compile"] = True  # HF would silently compile a static cache on CUDA
        # Plain greedy, as the other loops and the parity reference decode: no processing field
        # and no EOS (nor the checkpoint's: see _checkpoint_defaults_left_out), so every step
        # takes the raw argmax and every row runs exactly max_new_tokens (fixed work per request).
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self._pad_token_id(),  # fills generate_padded's left padding
            **kwargs,
        )

    def _pad_token_id(self) -> int:
        pad = self.model.config.pad_token_id
        eos = self.model.config.eos_token_id
        return int(pad if pad is not None else (eos if isinstance(eos, int) else 0))

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        ids = prompt_ids.to(self.device)
        if self.settings.loop == "graph":
            return self._graph_generate(ids, max_new_tokens)
        return self._hf_generate(ids, torch.ones_like(ids), max_new_tokens)

    @torch.inference_mode()
    def generate_padded(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Generation:
        """Prompts of different lengths in one batch, left-padded (HF generate's loop only)."""
        if self.settings.loop != "hf":
            raise ValueError(f"loop={self.settings.loop} generates equal-length prompts only")
        width = max(len(p) for p in prompts)
        pad = self._pad_token_id()
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        return self._hf_generate(ids, mask, max_new_tokens)

    def _hf_generate(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> Generation:
        config = self._generation_config(max_new_tokens)
        clock = _TokenClock()
        # generate compiles every candidate's forward as graphs of one shared code object
        room = room_to_recompile() if self.settings.compile else nullcontext()
        with _checkpoint_defaults_left_out(self.model), room:
            if not self._checked_plain_greedy:
                check_plain_greedy(self.model, config, ids)
                self._checked_plain_greedy = True
            self._sync()
            start = time.perf_counter()
            output = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config, streamer=clock
            )
            self._sync()
            end = time.perf_counter()
        new_tokens = output.shape[1] - ids.shape[1]
        # stamps: [prompt, token 1, ..., token n, end]; the first token is ready at stamps[1]
        first_token = clock.stamps[1] if len(clock.stamps) > 2 else end
        return Generation(
            batch_size=ids.shape[0],
            new_tokens=new_tokens,
            ttft_seconds=first_token - start,
            total_seconds=end - start,
            token_ids=output[:, ids.shape[1] :].cpu(),
            token_times=tuple(clock.stamps[1 : 1 + new_tokens]),
        )

    def graph_decoder(self, batch: int, prompt: int, max_new_tokens: int) -> GraphDecoder:
        """The captured decode loop for one batch shape (loop=graph), built on first use."""
        decoder = self._decoder
        if decoder is None or (decoder.tokens.shape[0], decoder.prompt_tokens, decoder.new_tokens) != (
            batch,
            prompt,
            max_new_tokens,
        ):
            # free the previous shape's cache and graph first (the local held them too)
            decoder = self._decoder = None
            s = self.settings
            decoder = self._decoder = GraphDecoder(
                self.model, batch, prompt, max_new_tokens, self.device, s.compile, s.compile_layers
            )
        return decoder

    def _graph_generate(self, ids: torch.Tensor, max_new_tokens: int) -> Generation:
        batch, prompt = ids.shape
        tokens, ttft, total = self.graph_decoder(batch, prompt, max_new_tokens).generate(ids)
        return Generation(batch, max_new_tokens, ttft, total, token_ids=tokens.cpu())

    @torch.inference_mode()
    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        ids = token_ids.to(self.device)
        if not self.settings.kv_cache.startswith(("quanto", "hqq")):
            # one forward over the whole text: a KV cache would be built only to be dropped; the
            # half-precision logits cross to the host before the (exact) upcast, at half the bytes
            return self.model(input_ids=ids, use_cache=False).logits.cpu().float()
        cache = scoring_cache(self.settings.kv_cache, self.model.config)
        chunks = []
        for start in range(0, ids.shape[1], QUANTIZED_KV_SCORE_CHUNK):
            piece = ids[:, start : start + QUANTIZED_KV_SCORE_CHUNK]
            out = self.model(input_ids=piece, use_cache=True, **{cache_argument(self.model): cache})
            chunks.append(out.logits.cpu().float())
        return torch.cat(chunks, dim=1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._decoder = None
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
