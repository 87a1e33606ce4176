"""Files written whole or not at all: a crash mid-write leaves the previous file, never half of one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` beside `path`, then rename it over `path` (atomic on one filesystem)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def tensor_sha256(tensor: Any) -> str:
    """A tensor's values by content (token ids measured: the store's context, a recipe's record)."""
    return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()
