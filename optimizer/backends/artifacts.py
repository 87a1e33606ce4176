"""Build artifacts (exports, quantized models, engines) cached in the run's cache directory.

An artifact is a directory built aside and renamed into place once complete, with a provenance
file written last: a killed build leaves no half-written artifact that a later run would reuse,
and two processes building the same artifact keep one of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROVENANCE = "wattsmith-build.json"


def artifact_key(parts: dict[str, Any]) -> str:
    """A short, stable digest of everything that decides an artifact's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_artifact(out: Path, build: Callable[[Path], dict[str, Any]], what: str) -> Path:
    """`out`, built by `build(tmp_dir) -> provenance` unless a complete build is already there."""
    if (out / PROVENANCE).is_file():
        return out
    if out.exists():  # not ours: renames put the provenance in place with the rest
        log.warning("%s is not a complete build; building it again", out)
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
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
    provenance = {"what": what, "seconds": round(seconds, 1), **provenance}
    (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1, default=str))
    try:
        tmp.rename(out)
    except OSError:  # another process completed the same artifact first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / PROVENANCE).is_file():
            raise RuntimeError(f"could not move the {what} into {out}") from None
    log.info("built %s in %.1f s", what, seconds)
    return out
