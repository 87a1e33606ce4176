"""fp8 (e4m3) weights and activations with a static, calibrated activation scale per Linear.

Why static: dynamic per-token scaling (torchao) spends an amax reduction and a scale kernel per
Linear per step, which on an H200 cost more energy than the fp8 GEMMs saved. With a scale fixed
at calibration, quantizing the input is one multiply+clamp+cast that inductor fuses into the
kernel before it, and the GEMM is cuBLASLt fp8 with scalar (tensorwise) scales.

The output projection (lm_head, often tied to the embedding) always stays in bf16: quantizing it
broke the quality bound before, and it is one GEMM of many.

Calibration must run on workload text, never on the held-out text that measures quality:
calibrating on the evaluation text would fit the scales to it and flatter the quality score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
# cuBLASLt's fp8 GEMM (and torch._scaled_mm's CUDA checks) need K and N to be multiples of 16.
ALIGNMENT = 16
# The GEMM writes its output (and adds a bias) in 16-bit only: fp32 output refuses a bias on CUDA.
ACTIVATION_DTYPES = (torch.bfloat16, torch.float16)


class Float8StaticLinear(nn.Module):
    """y = x @ W.T + b with W and x in float8_e4m3fn, each with one fp32 scale.

    All state is buffers (nothing to train, and `.to(device)` moves the scales with the weight).
    forward has no host sync and no data-dependent branch, so it compiles with
    `torch.compile(dynamic=False)` and can be captured in a CUDA graph.
    """

    weight: torch.Tensor  # [out_features, in_features] float8_e4m3fn
    weight_scale: torch.Tensor  # [] fp32: amax(|W|) / 448
    input_scale: torch.Tensor  # [] fp32: calibrated amax(|x|) * margin / 448
    input_scale_inv: torch.Tensor  # [] fp32: 1 / input_scale, so quantizing is a multiply
    bias: torch.Tensor | None  # [out_features] in the activation dtype

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        input_scale: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
        fast_accum: bool = True,
    ) -> None:
        super().__init__()
        if weight.dtype != FP8_DTYPE or weight.dim() != 2:
            raise ValueError(
                f"weight: expected a 2-D {FP8_DTYPE} tensor, got {weight.dtype} {tuple(weight.shape)}"
            )
        if out_dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"out_dtype: expected bfloat16 or float16, got {out_dtype}")
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.out_dtype = out_dtype
        # Accumulate without periodic promotion on Hopper: faster, and torchao's inference default.
        self.fast_accum = fast_accum
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).reshape(()))
        scale = input_scale.to(torch.float32).reshape(())
        self.register_buffer("input_scale", scale)
        self.register_buffer("input_scale_inv", torch.reciprocal(scale))
        self.register_buffer("bias", None if bias is None else bias.to(out_dtype).contiguous())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, input_amax: float, margin: float = 1.0, fast_accum: bool = True
    ) -> Float8StaticLinear:
        """Quantize `linear`'s weight per tensor; `input_amax` is the calibrated max |input|,
        widened by `margin` (>= 1 leaves headroom for inputs beyond the calibration text)."""
        if not (math.isfinite(input_amax) and input_amax > 0):
            raise ValueError(f"input_amax: expected a positive finite number, got {input_amax}")
        if not (math.isfinite(margin) and margin > 0):
            raise ValueError(f"margin: expected a positive finite number, got {margin}")
        w = linear.weight.detach().to(torch.float32)
        # An all-zero weight would give scale 0 and NaN on division; any positive scale is exact.
        weight_scale = (w.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        weight = (w / weight_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        input_scale = torch.tensor(input_amax * margin / FP8_MAX, dtype=torch.float32, device=w.device)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(weight, weight_scale, input_scale, bias, linear.weight.dtype, fast_accum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        # Scale in fp32 (as torchao does), then clamp: a cast of |v| > 448 to e4m3fn gives NaN.
        # contiguous(): _scaled_mm on CUDA needs a row-major left operand.
        xq = (x2.to(torch.float32) * self.input_scale_inv).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).contiguous()
        y = torch._scaled_mm(
            xq,
            self.weight.t(),  # [K, N] column-major, as _scaled_mm wants its right operand
            scale_a=self.input_scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.out_dtype,
            use_fast_accum=self.fast_accum,
        )
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, out_dtype={self.out_dtype}, fast_accum={self.fast_accum}"
        )


@dataclass(frozen=True)
class Fp8StaticReport:
    """What quantize_fp8_static did: counts, and each Linear left in 16-bit with the reason."""

    layers_quantized: int
    layers_skipped: tuple[tuple[str, str], ...]  # (module name, reason)
    calibration_tokens: int

    def __str__(self) -> str:
        skipped = ", ".join(f"{name} ({reason})" for name, reason in self.layers_skipped) or "none"
        return (
            f"{self.layers_quantized} Linear layers in fp8 (static activation scales, "
            f"{self.calibration_tokens} calibration tokens); kept in 16-bit: {skipped}"
        )


def excluded_weights(model: nn.Module) -> set[int]:
    """ids of the weights every weight quantization keeps in 16-bit (fp8-static here, torchao in
    backend.py): the output projection's and the input embedding's (lm_head may be tied to it)."""
    excluded: set[int] = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        get: Callable[[], Any] | None = getattr(model, getter, None)
        module = get() if get is not None else None
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            excluded.add(id(weight))
    return excluded


def _classify(model: nn.Module) -> tuple[dict[str, nn.Linear], list[tuple[str, str]]]:
    """Every nn.Linear of `model`: the eligible ones by name, and the others with the reason."""
    excluded = excluded_weights(model)
    eligible: dict[str, nn.Linear] = {}
    skipped: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        n, k = module.out_features, module.in_features
        if id(module.weight) in excluded:
            skipped.append((name, "output projection or tied to the embedding: kept for quality"))
        elif module.weight.dtype not in ACTIVATION_DTYPES:
            skipped.append((name, f"weight dtype {module.weight.dtype}, not bfloat16/float16"))
        elif k % ALIGNMENT or n % ALIGNMENT:
            skipped.append((name, f"in={k}, out={n}: fp8 GEMM needs multiples of {ALIGNMENT}"))
        else:
            eligible[name] = module
    return eligible, skipped


def eligible_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers static fp8 may replace, by module name (not the output projection, not
    anything tied to the embedding, K and N multiples of 16, 16-bit weights)."""
    return _classify(model)[0]


def calibrate_input_amax(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Max |input| of each eligible Linear over prefill forwards of token-id `batches`
    ([rows, tokens] each, no KV cache). The output projection and anything tied to the
    embedding are not eligible. Hooks are removed afterwards, also on error.

    Returns {module name: amax}; a Linear that no forward reached is absent.
    """
    eligible, _ = _classify(model)
    # Running maxima stay on the device: one host sync at the end, not one per Linear per batch.
    amax: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["input"]
            batch_max = x.detach().abs().amax().to(torch.float32)
            previous = amax.get(name)
            # maximum() propagates NaN, so a non-finite input is reported rather than hidden.
            amax[name] = batch_max if previous is None else torch.maximum(previous, batch_max)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in eligible.items()]
    was_training = model.training
    try:
        model.eval()
        device = _device(model)
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: float(value.item()) for name, value in amax.items()}


def _device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _batches(ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, ids.shape[0], batch_size):
        yield ids[start : start + batch_size]


def quantize_fp8_static(
    model: nn.Module,
    calibration_ids: torch.Tensor,
    batch_size: int = 8,
    margin: float = 1.0,
    fast_accum: bool = True,
) -> Fp8StaticReport:
    """Calibrate `model` as it is (bf16/fp16), then swap each eligible nn.Linear for a
    Float8StaticLinear in place.

    Args:
        model: an HF causal LM (anything with `forward(input_ids=, use_cache=)` and
            `get_output_embeddings()`).
        calibration_ids: token ids [sequences, tokens] from workload text, never from the
            held-out quality text.
        batch_size: sequences per calibration forward.
        margin: factor on each calibrated amax (> 1 leaves headroom; inputs beyond it saturate).
        fast_accum: cuBLASLt fp8 fast accumulation (Hopper); see Float8StaticLinear.
    """
    if calibration_ids.dim() != 2 or calibration_ids.numel() == 0:
        raise ValueError(
            f"calibration_ids: expected non-empty [sequences, tokens], got {tuple(calibration_ids.shape)}"
        )
    if calibration_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"calibration_ids: expected integer token ids, got {calibration_ids.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin: expected a positive finite number, got {margin}")

    amax = calibrate_input_amax(model, _batches(calibration_ids, batch_size))
    eligible, skipped = _classify(model)
    quantized = 0
    # Popped, not iterated: a replaced Linear's 16-bit weight is freed before the next one is
    # quantized, so the build peaks at the loaded model (the memory fit's load peak), not at the
    # loaded model plus every fp8 copy.
    for name in list(eligible):
        linear = eligible.pop(name)
        value = amax.get(name)
        if value is None:
            skipped.append((name, "not reached by the calibration forwards"))
            continue
        if not (math.isfinite(value) and value > 0):
            skipped.append((name, f"calibrated input amax {value}: no usable scale"))
            continue
        parent_name, _, child = name.rpartition(".")
        replacement = Float8StaticLinear.from_linear(linear, value, margin, fast_accum)
        del linear
        setattr(model.get_submodule(parent_name), child, replacement)
        quantized += 1
    return Fp8StaticReport(quantized, tuple(skipped), int(calibration_ids.numel()))
