"""The two checks every schema validates with: each raises a UserError naming the field and the fix."""

from __future__ import annotations

from collections.abc import Sequence

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
