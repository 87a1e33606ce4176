"""The checks every schema validates with: each raises a UserError naming the field and the fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from optimizer.errors import UserError


def require(ok: bool, field_name: str, problem: str, fix: str) -> None:
    if not ok:
        raise UserError(field_name, problem, fix)


def require_subset(values: Sequence[object], allowed: Sequence[object], field_name: str) -> None:
    bad = [v for v in values if v not in allowed]
    require(
        not bad,
        field_name,
        f"unknown value(s) {bad}",
        f"use values from {list(allowed)}",
    )
    require(len(values) > 0, field_name, "is empty", f"give at least one of {list(allowed)}")


def require_finite(config: Any, prefix: str) -> None:
    """Every float field of a config dataclass (and of a list of floats) is finite: `inf` passes
    `>= 0` (an endless idle wait or window, a stream whose arrivals all fall at 0 s)."""
    for item in fields(config):
        value = getattr(config, item.name)
        values = value if isinstance(value, list) else [value]
        require(
            all(math.isfinite(v) for v in values if isinstance(v, float)),
            f"{prefix}.{item.name}",
            f"is {value}",
            "a finite number",
        )
