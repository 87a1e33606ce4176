"""Build artifacts (exports, quantized models, engines) cached in the run's cache directory.

An artifact is a directory built aside and renamed into place once complete, with a provenance
file written last: a killed build leaves no half-written artifact that a later run would reuse,
and two processes building the same artifact keep one of them. The provenance lists the sha256 of
every file built: a recipe records those of the artifact its engine served, so a rebuild (another
package version, another machine) or a deployment's own copy can be checked against what was
measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from optimizer.files import write_atomically
from optimizer.model_files import file_sha256
from optimizer.processes import remove_stale_temps, temp_path

log = logging.getLogger(__name__)

PROVENANCE = "wattsmith-build.json"
FILES = "files"  # the provenance's {relative path: sha256} of the artifact's content

# the artifacts `cached_artifact` handed out inside `artifacts_used()`, in order
_used: ContextVar[list[Path] | None] = ContextVar("wattsmith_artifacts_used", default=None)


def artifact_key(parts: dict[str, Any]) -> str:
    """A short, stable digest of everything that decides an artifact's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_artifact(out: Path, build: Callable[[Path], dict[str, Any]], what: str) -> Path:
    """`out`, built by `build(tmp_dir) -> provenance` unless a complete build is already there."""
    _built_or_reused(out, what, build)
    used = _used.get()
    if used is not None:  # on return: an artifact built inside another's build comes first
        used.append(out)
    return out


def _built_or_reused(out: Path, what: str, build: Callable[[Path], dict[str, Any]]) -> None:
    # before the reuse too: a build killed outright while another process completed the artifact
    # would otherwise leave its copy for good
    remove_stale_temps(out)
    if (out / PROVENANCE).is_file():
        return
    if out.exists():  # not ours: renames put the provenance in place with the rest
        log.warning("%s is not a complete build; building it again", out)
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log.info("building %s into %s", what, out)
    start = time.perf_counter()
    try:
        provenance = build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    provenance = {"what": what, "seconds": round(seconds, 1), **provenance, FILES: content_sha256(tmp)}
    (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1, default=str))
    try:
        tmp.rename(out)
    except OSError:  # another process completed the same artifact first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / PROVENANCE).is_file():
            raise RuntimeError(f"could not move the {what} into {out}") from None
    log.info("built %s in %.1f s", what, seconds)


def content_sha256(folder: Path) -> dict[str, str]:
    """sha256 of each file in an artifact (its provenance aside), by path inside it: what
    `sha256sum` says of a deployment's copy."""
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != PROVENANCE
    }


def artifact_files(out: Path) -> dict[str, str]:
    """The recorded file digests of a complete build."""
    return dict(_provenance(out)[FILES])


def _provenance(out: Path) -> dict[str, Any]:
    """A complete build's provenance; one built before file digests were recorded is hashed now
    and its provenance completed."""
    path = out / PROVENANCE
    provenance: dict[str, Any] = json.loads(path.read_text())
    if FILES not in provenance:
        provenance[FILES] = content_sha256(out)
        write_atomically(path, json.dumps(provenance, indent=1, default=str))
    return provenance


@contextmanager
def artifacts_used() -> Iterator[list[Path]]:
    """The artifacts built or reused inside the block, in order: an engine's build makes its
    intermediates first (an fp32 export before its int8 variant), the one it serves last."""
    used: list[Path] = []
    token = _used.set(used)
    try:
        yield used
    finally:
        _used.reset(token)


def served_artifact(used: list[Path]) -> dict[str, Any] | None:
    """What a recipe records of the artifact an engine serves: its kind and file digests. None
    for an engine that serves the model's own weights (their hash is the recipe's weight_sha256)."""
    if not used:
        return None
    provenance = _provenance(used[-1])
    return {"what": provenance.get("what"), "files": dict(provenance[FILES])}
