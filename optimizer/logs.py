"""Log format of the `optimize` command and of its workers (whose lines carry their index)."""

from __future__ import annotations

import logging
import sys


def setup_logging(prefix: str = "") -> None:
    """Warnings from libraries; our INFO progress lines, timestamped, on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    ours = logging.getLogger("optimizer")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
