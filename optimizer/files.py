"""Files written whole or not at all: a crash mid-write leaves the previous file, never half of one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write in the block; renamed over `path` (atomic on one
    filesystem) once the block ends without an error, removed in every case; a block that wrote
    nothing leaves `path` as it was. For writers that take a path (a plot's savefig): name the
    format, the temporary's suffix is not `path`'s."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        if temporary.exists():
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` beside `path`, then rename it over `path` (atomic on one filesystem)."""
    with replacing_atomically(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def tensor_sha256(tensor: Any) -> str:
    """A tensor's values by content (token ids measured: the store's context, a recipe's record)."""
    return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()
