"""`optimize verify RECIPE --model ""` (an unset variable): refused naming --model, as an empty
--cache-dir is; it used to verify the recipe's own recorded weights without a word."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import optimizer.verify
from optimizer import cli


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The model_source each verify got (verify_recipe faked: a report that passed)."""
    seen: list[str | None] = []

    class Report:
        measured = passed = True

        def render(self) -> str:
            return "PASSED"

    def fake(*_args: object, model_source: str | None = None, **_kwargs: object) -> Report:
        seen.append(model_source)
        return Report()

    monkeypatch.setattr(optimizer.verify, "verify_recipe", fake)
    return seen


@pytest.mark.parametrize("flag", [["--model", ""], ["--model="], ["--model", "  "]])
def test_an_empty_model_flag_is_refused(
    flag: list[str], sources: list[str | None], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["verify", "recipe.yaml", *flag]) == 2
    assert sources == []  # nothing verified
    err = capsys.readouterr().err
    assert err.startswith("error: --model: is empty") and "leave --model out" in err


def test_a_model_flag_still_reaches_verify(sources: list[str | None]) -> None:
    assert cli.main(["verify", "recipe.yaml", "--model", "/weights/dir"]) == 0
    assert cli.main(["verify", "recipe.yaml"]) == 0
    assert sources == ["/weights/dir", None]
