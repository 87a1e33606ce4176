"""A crash of `optimize` exits with a code of its own: a CI running `optimize verify` must tell a
broken tool (3) from a recipe that failed (1)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import optimizer.pipeline
import optimizer.verify
from optimizer import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


class _Report:
    measured = True

    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def render(self) -> str:
        return "PASSED" if self.passed else "FAILED"


def _crash(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("internal bug")


def test_a_crashing_verify_exits_3_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(optimizer.verify, "verify_recipe", _crash)
    assert cli.main(["verify", "recipe.yaml"]) == cli.CRASHED == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: internal bug" in err
    assert "crashed (exit 3)" in err


def test_a_failing_verify_still_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(optimizer.verify, "verify_recipe", lambda *a, **k: _Report(passed=False))
    assert cli.main(["verify", "recipe.yaml"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_crashing_search_exits_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(optimizer.pipeline, "optimize", _crash)
    assert cli.main(["target=cpu", f"output_dir={tmp_path / 'out'}"]) == 3


def test_the_process_exit_code_is_3() -> None:
    """The command as a process (`python -m optimizer` exits with main's code)."""
    script = (
        "import sys\n"
        "from optimizer import cli, verify\n"
        "def crash(*a, **k):\n"
        "    raise RuntimeError('internal bug')\n"
        "verify.verify_recipe = crash\n"
        "sys.exit(cli.main(['verify', 'recipe.yaml']))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 3, child.stderr
    assert "RuntimeError: internal bug" in child.stderr


def test_help_lists_the_crashed_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "3 crashed" in capsys.readouterr().out
