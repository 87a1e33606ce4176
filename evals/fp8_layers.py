"""Which Linear layers can take static fp8 on this model? The quality probe with fp8 applied to
a subset of the layers (the rest stay bf16), on the packaged model's real weights.

    python evals/fp8_layers.py [overrides...]

Scales are calibrated once on the workload text (as the fp8-static candidate does); the fp8
matmuls run through torch._scaled_mm (its CPU kernel here: the same e4m3 numerics as on a GPU).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.backends.torch.backend import (  # noqa: E402
    FP8_CALIBRATION_SEQUENCES,
    FP8_CALIBRATION_TOKENS,
    TorchEngine,
    load_hf_model,
)
from optimizer.backends.torch.fp8_static import Float8StaticLinear, calibrate_input_amax, eligible_linears  # noqa: E402
from optimizer.backends.torch.settings import TorchSettings  # noqa: E402
from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.quality import evaluate_quality  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.measure.text import calibration_windows  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402

# (name, regex of the layers kept in bf16)
SUBSETS = [
    ("every Linear but lm_head", None),
    ("but down_proj", r"down_proj"),
    ("but the first and last layer", r"layers\.(0|{last})\."),
    ("but down_proj, first, last layer", r"down_proj|layers\.(0|{last})\."),
    ("MLP gate/up only", r"self_attn|down_proj"),
    ("attention q/k/v/o only", r"mlp"),
]


def main() -> None:
    cfg = compose_run_config(["workload=batch", *sys.argv[1:]])
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, Path(cfg.cache_dir).expanduser(), 1
    )
    reference = Evaluator.for_setup(setup).reference()
    ids = torch.tensor(
        calibration_windows(setup.model.path, False, FP8_CALIBRATION_TOKENS, FP8_CALIBRATION_SEQUENCES)
    )
    last = setup.model.shape.num_layers - 1
    print(f"{setup.model.name}: reference perplexity {reference.perplexity:.3f}; bound: {cfg.quality}")
    for name, keep in SUBSETS:
        model = load_hf_model(setup.model, "bf16", "sdpa", setup.target.device)
        amax = calibrate_input_amax(model, list(ids.split(8)))
        modules = dict(model.named_modules())
        swapped = 0
        for layer, linear in eligible_linears(model).items():
            if keep and re.search(keep.format(last=last), layer):
                continue
            parent, _, child = layer.rpartition(".")
            setattr(modules[parent], child, Float8StaticLinear.from_linear(linear, amax[layer]))
            swapped += 1
        quality = evaluate_quality(
            TorchEngine(model, TorchSettings(precision="bf16"), setup.target.device), reference
        )
        verdict = "; ".join(quality.violations(cfg.quality)) or "inside the bound"
        print(
            f"{name:<36} {swapped:3d} fp8 layers  ppl {quality.ppl_increase:+.2%}  "
            f"top-1 {quality.top1_agreement:.1%}  KL {quality.mean_kl:.4f}  {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
