"""load_recipe's build: the engine a recipe names, on this machine. What keeps it from being built
here is said in a deployment's terms: the recipe's fields and `model_source=`, not optimize's
`target=` and `model=` (a fix load_recipe cannot take), nor a backend's own traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.artifacts import artifacts_used, served_artifact
from optimizer.backends.registry import spec_for
from optimizer.errors import UserError
from optimizer.recipe_checks import artifact_change
from optimizer.space import exclusion_reason

if TYPE_CHECKING:
    from optimizer.backends.base import Engine
    from optimizer.model import ModelSpec
    from optimizer.recipe import Recipe
    from optimizer.target import TargetSpec

log = logging.getLogger("optimizer.recipe")  # the name load_recipe's warnings have always had
# the fix that ends every "not on this machine" error, load_recipe's and verify's
ELSEWHERE = "or run optimize here for a recipe of this machine"


def build_here(
    recipe: Recipe, model: ModelSpec, target: TargetSpec, cache: Path, request_tokens: int | None
) -> Engine:
    """`load_recipe` once the weights are the recorded ones: the engine, sized for serving."""
    from optimizer.backends.registry import build_engine

    with _cannot_run_here(recipe, target, model), artifacts_used() as used:
        engine = build_engine(model, recipe.candidate, target, cache)
    changed = artifact_change(recipe.data.get("artifact"), served_artifact(used))
    if changed:
        log.warning("%s: `optimize verify` re-measures it here", changed)
    if request_tokens is None and recipe.workload.serving:  # as the measurement sized it
        recorded = recipe.data["measurement"].get("longest_request_tokens")
        request_tokens = recorded if isinstance(recorded, int) else recipe.workload.longest_request_tokens()
    reserve = getattr(engine, "reserve", None)
    if request_tokens is not None and reserve is not None and hasattr(engine, "submit"):
        reserve(request_tokens)
    return engine


def target_here(recipe: Recipe) -> TargetSpec:
    """This machine as the recipe's target kind; a GPU recipe where no GPU is usable names the
    recipe's device (detect_target's own fix, `target=cpu`, is optimize's)."""
    from optimizer.target import detect_target

    try:
        return detect_target(recipe.target)
    except UserError as error:
        if error.field != "target":
            raise
        gpu = recipe.data["target"].get("gpu")
        name = str(gpu["name"]) if isinstance(gpu, dict) and gpu.get("name") else None
        measured = f" (measured on {name})" if name else ""
        raise UserError(
            "recipe.target.kind",
            f"is {recipe.target.kind}{measured}, but no CUDA GPU is usable here (NVML or torch.cuda)",
            f"load it on a machine with {name or 'a CUDA GPU'}, {ELSEWHERE}",
        ) from None


@contextmanager
def model_errors_name(
    given: bool,
    flag: str = "model_source",
    recorded: str = "recipe.model.source",
    fix: str = "pass model_source=<path>: the weights the recipe was measured on",
) -> Iterator[None]:
    """The weights' errors in the caller's terms: the field is `flag` when a source was given
    (else the recipe's `recorded` field), and a fix in optimize's syntax (`model=`) is `fix`."""
    try:
        yield
    except UserError as error:
        if error.field != "model.source":
            raise
        raise UserError(
            flag if given else recorded, error.problem, fix if "model=" in error.fix else error.fix
        ) from None


def refuse_excluded_here(recipe: Recipe, target: TargetSpec) -> None:
    """Settings whose backend rules exclude them on this device are refused before the weights
    are hashed or built, as verify refuses them: some build and then fail (an offloaded KV cache
    builds on a CPU; transformers' cache update asserts CUDA at the first generate). A precision
    without native kernels here (bf16 on most CPUs) and more threads than cores run correctly,
    only slower: those load, and a build they fail is named by `_cannot_run_here`. Verify refuses
    more threads than cores (the evidence cannot be re-measured with them): a warning says so."""
    _warn_oversubscribed(recipe, target)
    settings = recipe.candidate.settings
    native = replace(target, bf16=True, fp16=True)  # those flags say a kernel is fast, not that it runs
    cannot = spec_for(settings).exclusion_reason(settings, native)
    if cannot is not None:
        raise _cannot_run(recipe, cannot)


def _warn_oversubscribed(recipe: Recipe, target: TargetSpec) -> None:
    """Loaded, not refused: a deployment in a container with fewer cores than the machine the
    recipe was selected on still serves, only slower (the threads contend for the cores:
    backends/openmp.py), so its tokens/J and latency are not the recipe's evidence."""
    threads, cores = recipe.candidate.threads, target.cores
    if threads > cores:  # space.exclusion_reason's rule and words, which verify refuses with
        log.warning(
            "recipe.settings.threads: threads %d > %d cores here (optimize verify refuses it): loaded, "
            "but oversubscribed threads run slower than the recipe's evidence (measured on %s); "
            "set settings.threads to at most %d, %s",
            threads,
            cores,
            _recorded_device(recipe),
            cores,
            ELSEWHERE,
        )


def _cannot_run(recipe: Recipe, cannot: str) -> UserError:
    return UserError(
        "recipe.settings",
        f"this machine cannot run {recipe.candidate.label()}: {cannot}",
        f"install the package it names, load it on a machine like the recipe's ({_recorded_device(recipe)}), "
        + ELSEWHERE,
    )


@contextmanager
def _cannot_run_here(recipe: Recipe, target: TargetSpec, model: ModelSpec) -> Iterator[None]:
    """A build that fails where the search's rules would have excluded the candidate (its package
    missing, a GPU-only kernel on a CPU) says why, as verify does, instead of the backend's error.
    The rules `refuse_excluded_here` leaves to the build (more threads than cores, a precision
    without native kernels) refuse nothing: a build they would exclude that works is left to work."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        candidate = recipe.candidate
        cannot = exclusion_reason(candidate, target, recipe.workload.serving, model.shape, model.format)
        if cannot is None:
            raise
        raise _cannot_run(recipe, cannot) from error


def _recorded_device(recipe: Recipe) -> str:
    """The GPU, or the CPU and its cores, the recipe was measured on."""
    recorded = recipe.data["target"]
    gpu = recorded.get("gpu")
    if isinstance(gpu, dict) and gpu.get("name"):
        return str(gpu["name"])
    cores = recorded.get("cores")
    return f"{recorded.get('cpu_model') or 'a CPU'}" + (f", {cores} cores" if cores else "")


def refuse_source_nowhere(recipe: Recipe, source: str) -> None:
    """A recorded relative path to local weights (format hf-dir or gguf) that `source_here` found
    nowhere is refused naming where it looked: resolve_model would try `weights/model.gguf` as a
    hub id and fail on that. A hub id (format hub), a packaged name or a found path goes on."""
    from optimizer.model import PACKAGED_MODELS

    recorded, fmt = source.strip(), recipe.data["model"].get("format")
    given = Path(recorded).expanduser()
    if fmt not in ("hf-dir", "gguf") or recorded in PACKAGED_MODELS or given.is_absolute() or given.exists():
        return
    folder = recipe.path.absolute().parent
    raise UserError(
        "recipe.model.source",
        f"{recorded} (local {fmt} weights when measured) is neither in the current directory "
        f"({Path.cwd()}) nor in the recipe's directory ({folder}) or one above it",
        f"put the weights the recipe was measured on at {folder / given}, load it from the directory "
        "optimize ran in, or pass model_source=<path to them>",
    )
