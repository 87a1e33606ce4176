"""The quality probe alone, for candidate settings the target's rules may exclude for speed.

    python evals/quality_probe.py '{precision: bf16, quantization: fp8-static}' '{precision: bf16}'
    python evals/quality_probe.py --out result.json '{...}' -- model=/path quality=strict

Each candidate is built on this machine's device (no rule checks: e.g. fp8-static, a GPU
candidate, runs on a CPU through torch._scaled_mm's CPU kernel with the same fp8 numerics) and
scored against the fp32 eager reference on the held-out text, exactly as a search would; the
verdict is the configured quality bound. No energy is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.backends.registry import build_engine  # noqa: E402
from optimizer.config import compose_run_config  # noqa: E402
from optimizer.measure.quality import evaluate_quality  # noqa: E402
from optimizer.measure.setup import prepare_measurement  # noqa: E402
from optimizer.search.evaluate import Evaluator  # noqa: E402
from optimizer.space import Candidate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("candidates", nargs="+", help="settings as YAML flow mappings; `--` then overrides")
    parser.add_argument("--out", type=Path)
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    cfg = compose_run_config(["workload=batch", *overrides])
    setup = prepare_measurement(
        cfg.model, cfg.target, cfg.workload, cfg.quality, Path(cfg.cache_dir).expanduser(), 1
    )
    evaluator = Evaluator.for_setup(setup)
    reference = evaluator.reference()
    print(
        f"model {setup.model.name} on {setup.target.device}; reference perplexity {reference.perplexity:.3f}"
    )
    rows = []
    for text in args.candidates:
        values = {"backend": "torch", "batch_size": 1, "threads": 0} | yaml.safe_load(text)
        candidate = Candidate.from_dict(values)
        start = time.perf_counter()
        engine = build_engine(setup.model, candidate, setup.target, setup.cache_dir)
        try:
            quality = evaluate_quality(engine, reference)
        finally:
            engine.close()
        broken = quality.violations(cfg.quality)
        rows.append({"candidate": candidate.to_dict(), "quality": quality.to_dict(), "violations": broken})
        print(
            f"{candidate.label():<48} ppl {quality.ppl_increase:+.2%}  top-1 {quality.top1_agreement:.1%}  "
            f"KL {quality.mean_kl:.4f}  {'breaks the bound: ' + '; '.join(broken) if broken else 'inside the bound'}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )
    if args.out:
        facts = {
            "model": setup.model.identity(),
            "device": setup.target.fingerprint(),
            "quality_config": cfg.quality.__dict__,
            "reference_perplexity": reference.perplexity,
        }
        args.out.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
