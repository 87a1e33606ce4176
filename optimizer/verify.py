"""`optimize verify`: re-measure a recipe on this machine and compare with its evidence."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from optimizer.config import TargetConfig
from optimizer.measure.energy import measure_idle_watts
from optimizer.measure.setup import prepare_measurement
from optimizer.recipe import check_weights, default_cache_dir, model_config_for, read_recipe
from optimizer.search.evaluate import Evaluator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    recorded: str
    measured: str
    passed: bool


@dataclass(frozen=True)
class VerifyReport:
    recipe: Path
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"verify {self.recipe}"]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"  {mark} {c.name:<{width}}  recorded {c.recorded:<28} here {c.measured}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def verify_recipe(
    path: Path | str,
    tolerance: float = 0.25,
    model_source: str | None = None,
    cache_dir: Path | None = None,
) -> VerifyReport:
    """Rebuild the recipe's engine, re-run its quality probe and workload, compare.

    Passes when the weights hash matches, the target and energy source are the recorded ones,
    quality is inside the recipe's bound, the SLO holds, and goodput tokens/J is no more than
    `tolerance` (a fraction) below the recorded mean.
    """
    recipe = read_recipe(path)
    cache = cache_dir or default_cache_dir()
    cand = recipe.candidate
    setup = prepare_measurement(
        model_config_for(recipe, model_source),
        TargetConfig(kind=recipe.target_kind),
        recipe.workload,
        recipe.quality,
        cache,
        max(cand.batch_size, 16),
    )
    check_weights(recipe, setup.model.weight_sha256)
    recorded_target = recipe.data["target"]
    here = setup.target.fingerprint()
    device_key = "gpu" if setup.target.is_cuda else "cpu_model"
    recorded_device = _device_name(recorded_target, device_key)
    here_device = _device_name(here, device_key)
    evidence = recipe.evidence
    energy = evidence["energy"]
    checks = [
        Check(
            "weights sha256", recipe.data["model"]["weight_sha256"][:16], setup.model.weight_sha256[:16], True
        ),
        Check("device", recorded_device, here_device, recorded_device == here_device),
        Check("energy source", energy["source"], setup.meter.source, energy["source"] == setup.meter.source),
    ]
    recorded_stream = (evidence.get("serving") or {}).get("stream_sha256")
    if recorded_stream or setup.stream:
        here_stream = setup.stream.sha256 if setup.stream else None
        checks.append(
            Check(
                "request stream sha256",
                str(recorded_stream)[:16],
                str(here_stream)[:16],
                recorded_stream == here_stream,
            )
        )
    measure_idle_watts(setup.meter, recipe.workload.idle_seconds)
    result = Evaluator.for_setup(setup).evaluate(
        cand, role="baseline"
    )  # measured even if quality broke: show both
    if result.quality is None or result.performance is None:
        checks.append(Check("build and run", "ok", result.reason or "no result", False))
        return VerifyReport(recipe.path, checks)
    q, perf = result.quality, result.performance
    broken = q.violations(recipe.quality)
    recorded_q = evidence["quality"] or {}
    checks.append(
        Check(
            "quality (ppl / top-1 / KL)",
            f"{recorded_q.get('ppl_increase', 0):+.2%} / {recorded_q.get('top1_agreement', 0):.1%} / {recorded_q.get('mean_kl', 0):.4f}",
            f"{q.ppl_increase:+.2%} / {q.top1_agreement:.1%} / {q.mean_kl:.4f}"
            + (f"  ({'; '.join(broken)})" if broken else ""),
            not broken,
        )
    )
    recorded_latency = evidence["latency"]
    checks.append(
        Check(
            "SLO",
            _latency_text(recorded_latency["ttft_ms"], recorded_latency["tpot_ms"]),
            _latency_text(perf.latency.ttft_ms, perf.latency.tpot_ms)
            + (f" ({'; '.join(perf.slo_violations)})" if perf.slo_violations else ""),
            perf.slo_met,
        )
    )
    recorded = float(energy["goodput_tokens_per_joule"]["mean"])
    measured = perf.goodput_tokens_per_joule.mean
    checks.append(
        Check(
            f"goodput tok/J (>= {1 - tolerance:.0%} of recorded)",
            f"{recorded:.3f} ({energy['source']})",
            f"{measured:.3f} ({perf.source}, {measured / recorded:.2f}x)" if recorded else f"{measured:.3f}",
            measured >= (1 - tolerance) * recorded,
        )
    )
    return VerifyReport(recipe.path, checks)


def _latency_text(ttft_ms: dict[str, float], tpot_ms: dict[str, float]) -> str:
    return f"TTFT p90 {ttft_ms.get('p90', 0):.0f} ms, TPOT p90 {tpot_ms.get('p90', 0):.0f} ms"


def _device_name(fingerprint: dict[str, object], key: str) -> str:
    value = fingerprint.get(key)
    if isinstance(value, dict):
        return str(value.get("name"))
    return str(value)
