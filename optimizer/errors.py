"""The one error type for bad user input."""

from __future__ import annotations


class UserError(ValueError):
    """Bad user input: names the config field at fault and the fix. The CLI exits 2 on it.

    Subclasses ValueError so that config dataclasses can raise it from validation and callers
    of the Python API can catch a plain ValueError.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}\n  fix: {self.fix}"

    def __reduce__(self) -> tuple[type[UserError], tuple[str, str, str]]:
        # the default pickles only the message: unpickling (a worker's error sent back) would fail
        return (UserError, (self.field, self.problem, self.fix))
