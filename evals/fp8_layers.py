"""Where does fp8 lose quality on this model, and which Linear layers can take static fp8? The
quality probe on the packaged model's real weights, in two tables:

1. where the loss comes from: e4m3 round trips (fake quantization, fp32 matmuls) of the weights
   only (per tensor, per output channel), of the activations only (a static calibrated scale per
   tensor, a dynamic scale per token), of both, and of both after SmoothQuant's per-channel
   migration (alpha 0.5, folded into the weights here; a deployment folds it into the norms);
2. the fp8-static candidate's own layers (Float8StaticLinear, torch._scaled_mm: its CPU kernel
   here has the same e4m3 numerics as on a GPU) on subsets of the layers, the rest in bf16.

    python evals/fp8_layers.py [overrides...]

Scales are calibrated once on the workload text, as the fp8-static candidate does.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.backends.torch.backend import (  # noqa: E402
    FP8_CALIBRATION_SEQUENCES,
    FP8_CALIBRATION_TOKENS,
    TorchEngine,
    load_hf_model,
)
from optimizer.backends.torch.fp8_static import Float8StaticLinear, calibrate_input_amax, eligible_linears  # noqa: E402
from optimizer.backends.torch.settings import TorchSettings  # noqa: E402
from optimizer.config import QualityConfig, compose_run_config  # noqa: E402
from optimizer.measure.quality import QualityReference, evaluate_quality  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.measure.text import calibration_windows  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
SMOOTH_ALPHA = 0.5

# (name, weight scaling, activation scaling, SmoothQuant) for the decomposition table
SOURCES = [
    ("weights only, per tensor", "tensor", "none", False),
    ("weights only, per output channel", "channel", "none", False),
    ("activations only, static per tensor", "none", "static", False),
    ("activations only, dynamic per token", "none", "token", False),
    ("both, static per tensor (fp8-static)", "tensor", "static", False),
    ("both, per channel + per token", "channel", "token", False),
    ("both, static, after SmoothQuant 0.5", "channel", "static", True),
]

# (name, regex of the layers kept in bf16)
SUBSETS = [
    ("every Linear but lm_head", None),
    ("but down_proj", r"down_proj"),
    ("but the first and last layer", r"layers\.(0|{last})\."),
    ("but down_proj, first, last layer", r"down_proj|layers\.(0|{last})\."),
    ("MLP gate/up only", r"self_attn|down_proj"),
    ("attention q/k/v/o only", r"mlp"),
]


def round_trip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x through e4m3 at `scale` and back (clamped first: a cast beyond 448 gives NaN)."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).to(torch.float32) * scale


class FakeFp8Linear(nn.Module):
    """A Linear whose weight and/or input make an e4m3 round trip; the matmul stays fp32.
    `smooth`: SmoothQuant's per-input-channel factors (x / s) @ (W * s).T, exact before rounding."""

    def __init__(
        self,
        linear: nn.Linear,
        weights: str,
        inputs: str,
        input_amax: torch.Tensor,
        smooth: torch.Tensor | None,
    ) -> None:
        super().__init__()
        w = linear.weight.detach().float() * (1.0 if smooth is None else smooth[None, :])
        if weights != "none":
            dims = dict(dim=1, keepdim=True) if weights == "channel" else {}
            w = round_trip(w, w.abs().amax(**dims).clamp(min=1e-12) / FP8_MAX)
        self.weight_rounded = w
        self.bias_ = None if linear.bias is None else linear.bias.detach().float()
        self.inputs = inputs
        self.input_divisor = smooth
        self.input_scale = input_amax / FP8_MAX

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, x = x.dtype, x.float()
        if self.input_divisor is not None:
            x = x / self.input_divisor
        if self.inputs == "static":
            x = round_trip(x, self.input_scale)
        elif self.inputs == "token":
            x = round_trip(x, x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX)
        y = x @ self.weight_rounded.t()
        return (y if self.bias_ is None else y + self.bias_).to(dtype)


def channel_amax(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Max |input| per input channel of each eligible Linear over the calibration forwards."""
    found: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float()
            value = x.abs().reshape(-1, x.shape[-1]).amax(0)
            found[name] = value if name not in found else torch.maximum(found[name], value)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in eligible_linears(model).items()]
    try:
        with torch.inference_mode():
            for batch in ids.split(8):
                model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found


def swap(model: nn.Module, replacements: dict[str, nn.Module]) -> int:
    """Put each replacement in place of the Linear of that name; the count."""
    modules = dict(model.named_modules())
    for layer, replacement in replacements.items():
        parent, _, child = layer.rpartition(".")
        setattr(modules[parent], child, replacement)
    return len(replacements)


def fake_fp8(linear: nn.Linear, weights: str, inputs: str, x_max: torch.Tensor, smoothing: bool) -> nn.Module:
    """FakeFp8Linear for one layer; `x_max`: its calibrated max |input| per input channel."""
    smooth = None
    if smoothing:  # s_j = max|x_j|^a / max|W_j|^(1-a), per input channel j
        w_max = linear.weight.detach().float().abs().amax(0).clamp(min=1e-5)
        smooth = (x_max.clamp(min=1e-5) ** SMOOTH_ALPHA / w_max ** (1 - SMOOTH_ALPHA)).clamp(min=1e-5)
    input_amax = (x_max if smooth is None else x_max / smooth).amax()
    return FakeFp8Linear(linear, weights, inputs, input_amax, smooth)


def report(
    name: str, swapped: int, model: nn.Module, reference: QualityReference, bound: QualityConfig
) -> None:
    quality = evaluate_quality(TorchEngine(model, TorchSettings(precision="bf16"), "cpu"), reference)
    verdict = "; ".join(quality.violations(bound)) or "inside the bound"
    print(
        f"{name:<40} {swapped:3d} layers  ppl {quality.ppl_increase:+.2%}  "
        f"top-1 {quality.top1_agreement:.1%}  KL {quality.mean_kl:.4f}  {verdict}",
        flush=True,
    )


def main() -> None:
    cfg = compose_run_config(["workload=batch", "target=cpu", *sys.argv[1:]])
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, Path(cfg.cache_dir).expanduser(), 1
    )
    reference = Evaluator.for_setup(setup).reference()
    ids = torch.tensor(
        calibration_windows(setup.model.path, False, FP8_CALIBRATION_TOKENS, FP8_CALIBRATION_SEQUENCES)
    )
    last = setup.model.shape.num_layers - 1
    print(f"{setup.model.name}: reference perplexity {reference.perplexity:.3f}; bound: {cfg.quality}")
    bf16 = load_hf_model(setup.model, "bf16", "sdpa", "cpu")
    report("bf16 (no fp8)", 0, bf16, reference, cfg.quality)
    # calibrated once on the unmodified model; each row below swaps layers of a fresh copy
    per_channel = channel_amax(bf16, ids)
    amax = calibrate_input_amax(bf16, list(ids.split(8)))

    print("\n1. where the loss comes from (e4m3 round trips, fp32 matmuls; lm_head kept)")
    for name, weights, inputs, smoothing in SOURCES:
        model = load_hf_model(setup.model, "bf16", "sdpa", "cpu")
        fakes = {
            layer: fake_fp8(linear, weights, inputs, per_channel[layer], smoothing)
            for layer, linear in eligible_linears(model).items()
        }
        report(name, swap(model, fakes), model, reference, cfg.quality)

    print("\n2. the fp8-static candidate's layers (Float8StaticLinear) on subsets, the rest in bf16")
    for name, keep in SUBSETS:
        model = load_hf_model(setup.model, "bf16", "sdpa", "cpu")
        pattern = keep.format(last=last) if keep else None
        layers = {
            layer: Float8StaticLinear.from_linear(linear, amax[layer])
            for layer, linear in eligible_linears(model).items()
            if not (pattern and re.search(pattern, layer))
        }
        report(name, swap(model, layers), model, reference, cfg.quality)


if __name__ == "__main__":
    main()
