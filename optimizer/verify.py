"""`optimize verify`: re-measure a recipe on this machine and compare with its evidence."""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.config import SloConfig
from optimizer.config.run import cache_dir_from
from optimizer.errors import UserError
from optimizer.files import tensor_sha256
from optimizer.measure import PROTOCOL_VERSION
from optimizer.measure.energy import make_meter, measure_idle_watts
from optimizer.measure.setup import MeasurementSetup, prepare_measurement
from optimizer.measure.speed import SLOW_PROBE
from optimizer.measure.workload import PerformanceResult, label_sources
from optimizer.model import resolve_model
from optimizer.recipe import Recipe, check_weights, model_config_for, read_recipe
from optimizer.recipe_checks import artifact_change, inputs_here, trace_errors_name_the_recipe
from optimizer.recipe_load import ELSEWHERE, model_errors_name, refuse_source_nowhere
from optimizer.results import sig3
from optimizer.search.device_lock import DeviceLock
from optimizer.search.evaluate import Evaluator
from optimizer.search.plan import MIN_PROMPTS
from optimizer.space import dequantized_model_needed, exclusion_reason
from optimizer.target import TargetSpec, detect_target

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
    notes: list[str] = field(default_factory=list)
    # False: the device, the protocol or the inputs differ here, so nothing was re-measured (a
    # re-measurement would fail for the machine or the tool, not the recipe: CI must tell them apart)
    measured: bool = True

    @property
    def passed(self) -> bool:
        return self.measured and all(c.passed for c in self.checks)

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"verify {self.recipe}"]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"  {mark} {c.name:<{width}}  recorded {c.recorded:<28} here {c.measured}")
        lines.extend(f"  note {note}" for note in self.notes)
        if not self.measured:
            lines.append(
                "NOT VERIFIED: the recipe was measured under other conditions than these (FAIL above), so "
                "nothing was re-measured; run verify where they match, or run optimize here for a recipe "
                "of this machine"
            )
        else:
            lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def verify_recipe(
    path: Path | str,
    tolerance: float = 0.25,
    model_source: str | None = None,
    cache_dir: Path | None = None,
) -> VerifyReport:
    """Rebuild the recipe's engine, re-run its quality probe and workload, compare.

    Passes when the weights, the quality text, the request stream (serving) or the prompts' token
    ids (offline, when recorded) hash as recorded, the target and energy source are the recorded
    ones, quality is inside the recipe's bound, the SLO holds, and goodput tokens/J is within
    `tolerance` (a fraction) below the recorded mean and within its reciprocal above it (far above
    the record is as suspect as far below: a broken meter). The prompts are the recorded pool.
    The protocol, the device and whether the recorded energy source exists here are checked before
    anything is prepared; a relative trace or quality text is found by `inputs_here`.
    `cache_dir` (`--cache-dir`) holds converted models, built engines and file hashes, as a
    search's; without it WATTSMITH_CACHE's, else ~/.cache/wattsmith. An estimate is re-made with
    the recipe's coefficients. Like a search's worker, verify holds the device lock: its idle power
    and windows never overlap a search measuring on the device.
    """
    recipe = read_recipe(path)
    cache = cache_dir or _default_cache()
    cand = recipe.candidate
    estimated = recipe.evidence["energy"]["source"] == "estimate"  # (a meter's recipe needs none)
    if estimated and "energy_estimate" not in recipe.data["measurement"]:
        log.warning("the recipe does not record the estimate's watts per core: an estimate uses the defaults")
    conditions = _conditions_here(recipe)
    if not all(c.passed for c in conditions):  # decided before anything is prepared
        return VerifyReport(recipe.path, conditions, measured=False)
    workload, quality = inputs_here(recipe.path, recipe.workload, recipe.quality)
    convert = dequantized_model_needed([cand.backend], recipe.quality.reference)
    flag = model_errors_name(bool(model_source), "--model", "model.source", _FIX_MODEL)
    with flag, trace_errors_name_the_recipe():
        model_cfg = model_config_for(recipe, model_source)  # `--model " "`: an error naming --model
        if not model_source:
            _refuse_source_nowhere(recipe, model_cfg.source)
        if convert and recipe.data["model"].get("format") == "gguf":  # hashed before it is de-quantized
            check_weights(recipe, resolve_model(model_cfg, cache, convert_gguf=False).weight_sha256)
        setup = prepare_measurement(
            model_cfg, recipe.target, workload, quality, cache, _prompt_pool(recipe), convert
        )
    check_weights(recipe, setup.model.weight_sha256)
    recorded_target = recipe.data["target"]
    here = setup.target.fingerprint()
    evidence = recipe.evidence
    energy = evidence["energy"]
    recorded_text = recipe.data["measurement"].get("quality_text_sha256")
    checks = [
        Check(
            "weights sha256", recipe.data["model"]["weight_sha256"][:16], setup.model.weight_sha256[:16], True
        ),
        Check(
            "quality text sha256",
            str(recorded_text)[:16],
            setup.text_sha256[:16],
            recorded_text == setup.text_sha256,
        ),
        next(c for c in conditions if c.name == "device"),  # compared before preparing, shown here
        _protocol_check(recipe),
        source_check(str(energy["source"]), setup.meter.source),
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
    checks.extend(_prompts_check(recipe, setup))
    notes = _package_notes(recorded_target.get("packages"), here.get("packages"))
    if not all(c.passed for c in checks):  # the conditions so far: re-measuring here says nothing
        return VerifyReport(recipe.path, checks, notes, measured=False)
    cannot = exclusion_reason(
        cand, setup.target, recipe.workload.serving, setup.model.shape, setup.model.format
    )
    if cannot is not None:  # e.g. the backend's package is missing: say so now, not after measuring
        raise UserError(
            "recipe.settings",
            f"this machine cannot run {cand.label()}: {cannot}",
            _cannot_run_fix(recipe, setup.target),
        )
    device = DeviceLock.for_target(setup.target)
    with device.exclusive():  # idle means idle: no search builds or measures on the device meanwhile
        measure_idle_watts(setup.meter, recipe.workload.idle_seconds, recipe.workload.disturbed_retries)
    # measured even if quality broke: show both
    result = Evaluator.for_setup(setup, device=device).evaluate(cand, role="baseline")
    if result.quality is None or result.performance is None:
        checks.append(Check("build and run", "ok", result.reason or "no result", False))
        return VerifyReport(recipe.path, checks, notes)
    changed = artifact_change(recipe.data.get("artifact"), result.artifact)
    if changed:  # not a failure by itself: the re-measurement below judges the artifact built here
        notes.append(changed)
    speed = speed_note(energy.get("window_cpu_probe_mibps"), result.performance)
    if speed:
        notes.append(speed)
    q, perf = result.quality, result.performance
    broken = q.violations(recipe.quality)
    recorded_q = evidence["quality"] or {}
    checks.append(
        Check(
            "quality (ppl / top-1 / KL)",
            f"{recorded_q.get('ppl_increase', 0):+.2%} / {recorded_q.get('top1_agreement', 0):.1%} / {sig3(recorded_q.get('mean_kl', 0))}",
            f"{q.ppl_increase:+.2%} / {q.top1_agreement:.1%} / {sig3(q.mean_kl)}"
            + (f"  ({'; '.join(broken)})" if broken else ""),
            not broken,
        )
    )
    checks.append(slo_check(evidence["latency"], perf, recipe.workload.slo))
    checks.append(
        goodput_check(
            float(energy["goodput_tokens_per_joule"]["mean"]),
            str(energy["source"]),
            perf.goodput_tokens_per_joule.mean,
            perf.source,
            tolerance,
        )
    )
    return VerifyReport(recipe.path, checks, notes)


_FIX_MODEL = "pass --model <path or packaged name>: the weights the recipe was measured on"


def _cannot_run_fix(recipe: Recipe, target: TargetSpec) -> str:
    """The fix for what keeps this machine from running the recipe's settings: verify measures them
    as recorded, so fewer threads or GPUs than the evidence's are no fix."""
    cand, recorded = recipe.candidate, recipe.data["target"]
    gpu = _device_name(recorded, "gpu")
    cores = cand.threads * (1 if target.is_cuda else cand.processes)  # a CPU's processes pin their own
    if cores > target.cores and target.is_cuda:  # the device check compares the GPU, not the host's cores
        return f"verify on a host of {gpu} with at least {cores} cores, {ELSEWHERE}"
    if cores > target.cores:  # as many as the recipe records (the device check): its settings changed
        return f"restore the recipe from git (no search runs more threads than cores), {ELSEWHERE}"
    if target.gpu is not None and cand.processes > target.device_count - target.gpu.index:
        return f"verify on a host of {cand.processes} {gpu} GPUs, {ELSEWHERE}"
    device = _device_name(recorded, "gpu" if target.is_cuda else "cpu_model")
    return f"install the package it names, or verify on a machine like the recipe's ({device}), {ELSEWHERE}"


def _refuse_source_nowhere(recipe: Recipe, source: str) -> None:
    """load_recipe's refusal of local weights found nowhere (not tried as a hub id), in verify's terms."""
    try:
        refuse_source_nowhere(recipe, source)
    except UserError as error:
        at = recipe.path.absolute().parent / Path(source.strip()).expanduser()
        where = f"put the weights the recipe was measured on at {at}, run verify from where optimize ran"
        raise UserError(error.field, error.problem, f"{where}, or pass --model <path to them>") from None


def _conditions_here(recipe: Recipe) -> list[Check]:
    """What rules a recipe out before anything is prepared (a GGUF de-quantized, texts tokenized):
    another measurement protocol, another device (or none of its kind) or no recorded energy source
    here. As a FAIL check, not the run config's error: its fix (`target=cpu`) is not one verify can
    take. prepare_measurement detects the same target from the same config: its device is this one."""
    checks = [_protocol_check(recipe)]
    try:
        target = detect_target(recipe.target)
    except UserError as error:
        key = "gpu" if recipe.target.kind == "cuda" else "cpu_model"
        recorded_device = _device_name(recipe.data["target"], key)
        return [*checks, Check("device", recorded_device, f"unavailable: {error.problem}", False)]
    key = "gpu" if target.is_cuda else "cpu_model"
    recorded_device = _device_name(recipe.data["target"], key)
    here_device = _device_name(target.fingerprint(), key)
    checks.append(Check("device", recorded_device, here_device, recorded_device == here_device))
    recorded = str(recipe.evidence["energy"]["source"])
    if recipe.target.energy_source == "estimate":  # always here (and a meter made now warns twice)
        return checks
    try:
        here = make_meter(target).source
    except UserError as error:
        here = f"unavailable: {error.problem}"
    return [*checks, source_check(recorded, here)]


# How each source reads the boards it meters. The NVML meter falls back from the energy counter to
# polled power on a board whose counter is stuck (energy.py), which a fresh meter finds only in its
# first window: a recipe made on that board records the fallback and verify's new meter the counter.
_NVML_READINGS = {"nvml": "the energy counter", "nvml-power-poll": "polled power"}


def source_check(recorded: str, here: str) -> Check:
    """The energy source here against the recipe's: the same, or the same NVML boards read the other
    way or both ways (a recorded `nvml+nvml-power-poll`: the fallback mid-run), labelled; any other
    difference (rapl against estimate, a mix with an estimate, a meter unavailable) fails."""
    sources = label_sources(recorded)
    if here == recorded or not (set(sources) <= _NVML_READINGS.keys() and here in _NVML_READINGS):
        return Check("energy source", recorded, here, here == recorded)
    how = f"{_NVML_READINGS[here]} here, {' then '.join(_NVML_READINGS[s] for s in sources)} recorded"
    return Check("energy source", recorded, f"{here} (same NVML meter: {how})", True)


def _default_cache() -> Path:
    """WATTSMITH_CACHE's cache, else the default; its error names only the flag verify takes."""
    flags = "or pass the cache to verify instead: optimize verify RECIPE --cache-dir DIR"
    return Path(cache_dir_from(os.environ, flags)).expanduser()


def _protocol_check(recipe: Recipe) -> Check:
    recorded = recipe.data["measurement"].get("protocol_version")
    return Check("measurement protocol", str(recorded), str(PROTOCOL_VERSION), recorded == PROTOCOL_VERSION)


def _prompt_pool(recipe: Recipe) -> int:
    """The prompts the recipe's batches cycled through (the search's plan.prompt_pool, recorded):
    another pool is other prompts in the same batches. A recipe from before it was recorded gets the
    pool verify made then, its batch size and at least MIN_PROMPTS."""
    recorded = recipe.data["measurement"].get("prompt_pool")  # an int >= 1 (recipe_checks)
    return int(recorded) if recorded is not None else max(recipe.candidate.batch_size, MIN_PROMPTS)


def _prompts_check(recipe: Recipe, setup: MeasurementSetup) -> list[Check]:
    """The offline prompts' token ids against the recorded ones: another tokenizer changes them while
    the weights and the quality text hash the same. A serving recipe's stream hash covers what it
    measures; a recipe from before the hash has nothing to compare."""
    recorded = recipe.data["measurement"].get("prompt_tokens_sha256")
    if recorded is None or recipe.workload.serving:
        return []
    here = tensor_sha256(setup.workload.prompts)
    return [Check("prompt tokens sha256", recorded[:16], here[:16], recorded == here)]


def _package_notes(recorded: object, here: object) -> list[str]:
    """Tracked package versions that differ from the recipe's: not a failure (re-measuring is how
    an upgrade is checked), but the first thing to look at when a figure moved."""
    if not isinstance(recorded, dict) or not isinstance(here, dict):
        return []
    return [
        f"{name} {recorded.get(name) or 'absent'} recorded, {here.get(name) or 'absent'} here"
        for name in sorted(set(recorded) | set(here))
        if recorded.get(name) != here.get(name)
    ]


def speed_note(recorded: object, perf: PerformanceResult) -> str | None:
    """Where this machine's cores ran the CPU probe (measure/speed.py) outside SLOW_PROBE of the
    recipe's windows, in either direction: a figure that moved may be the machine, not the recipe."""
    if not isinstance(recorded, list) or not recorded:
        return None
    here = [w.cpu_probe_mibps for w in perf.windows if w.cpu_probe_mibps]
    if not here:
        return None
    then, now = statistics.median(float(v) for v in recorded), statistics.median(here)
    ratio = now / then
    if SLOW_PROBE <= ratio <= 1 / SLOW_PROBE:
        return None
    return (
        f"the CPU probe hashed {now:.0f} MiB per CPU second here before the windows against {then:.0f} "
        f"recorded ({ratio:.2f}x): this machine's cores run {'slower' if ratio < 1 else 'faster'} than the "
        "recipe's did (another CPU, or a host's clock), so latency and energy figures may move with them"
    )


def slo_check(recorded: dict[str, Any], perf: PerformanceResult, slo: SloConfig) -> Check:
    """The SLO at its configured percentile, with the recorded latencies beside the measured ones."""
    percentile = slo.percentile
    limits = [
        f"{name} p{percentile:g} <= {limit:g} ms"
        for name, limit in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms))
        if limit is not None
    ]
    return Check(
        f"SLO ({', '.join(limits) or 'none'})",
        _latency_text(recorded["ttft_ms"], recorded["tpot_ms"], percentile),
        _latency_text(perf.latency.ttft_ms, perf.latency.tpot_ms, percentile)
        + (f" ({'; '.join(perf.slo_violations)})" if perf.slo_violations else ""),
        perf.slo_met,
    )


def goodput_check(
    recorded: float, recorded_source: str, measured: float, measured_source: str, tolerance: float
) -> Check:
    """Goodput tokens/J within [1 - tolerance, 1 / (1 - tolerance)] x the recorded mean: a figure
    far above the record fails too (a meter that lost energy would pass a one-sided check).
    Figures to three significant digits: at fixed decimals a CPU's ~0.01 tok/J reads alike."""
    low, high = 1 - tolerance, 1 / (1 - tolerance)
    name = f"goodput tok/J ({low:.2f}x-{high:.2f}x of recorded)"
    if not recorded > 0:  # nothing to be within a fraction of: no figure passes against it
        return Check(
            name,
            f"{sig3(recorded)} ({recorded_source})",
            f"{sig3(measured)} ({measured_source}): the recipe records no goodput to compare with",
            False,
        )
    ratio = measured / recorded
    note = ""
    if ratio > high:
        note = ": far above the record, check the energy meter"
    elif ratio < low:
        note = ": below the record"
    return Check(
        name,
        f"{sig3(recorded)} ({recorded_source})",
        f"{sig3(measured)} ({measured_source}, {ratio:.2f}x{note})",
        low <= ratio <= high,
    )


def _latency_text(ttft_ms: dict[str, float], tpot_ms: dict[str, float], percentile: float) -> str:
    key = f"p{percentile:g}"

    def value(ms: dict[str, float]) -> str:
        return f"{ms[key]:.0f} ms" if key in ms else "n/a"

    return f"TTFT {key} {value(ttft_ms)}, TPOT {key} {value(tpot_ms)}"


def _device_name(fingerprint: dict[str, object], key: str) -> str:
    """The GPU's name; the CPU's model and cores (the estimate charges idle watts per core, and
    RAPL meters the whole package: another core count is another energy figure)."""
    value = fingerprint.get(key)
    if isinstance(value, dict):
        return str(value.get("name"))
    cores = fingerprint.get("cores")
    return f"{value}, {cores} core{'' if cores == 1 else 's'}"
