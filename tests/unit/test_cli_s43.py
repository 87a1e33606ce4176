"""The `optimize` command when its reader stops reading, and `verify` written after other words."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


# verify_recipe faked: a report that passed, as after a re-measurement (nothing measured here)
_FAKE_VERIFY = """
import sys
from optimizer import cli, verify

class Report:
    measured = passed = True
    def render(self):
        return "PASSED"

verify.verify_recipe = lambda *args, **kwargs: Report()
sys.exit(cli.main(sys.argv[1:]))
"""


def _run_into_a_closed_pipe(args: list[str], unbuffered: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    """`optimize ARGS | head -0`, deterministic: the pipe's reader is gone before anything is written."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["WATTSMITH_CACHE"] = str(tmp_path / "cache")
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = (
        [sys.executable, "-c", _FAKE_VERIFY, *args]
        if args[:1] == ["verify"]
        else [
            sys.executable,
            "-m",
            "optimizer",
            *args,
        ]
    )
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            command, stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize(
    "args", [["--help"], ["--show-config", "target=cpu"], ["verify", "r.yaml"], ["verify", "-h"]]
)
def test_a_reader_that_stops_reading_changes_no_exit_code(
    args: list[str], unbuffered: bool, tmp_path: Path
) -> None:
    """`optimize verify r.yaml | head -3`: the verdict's exit code (0 here), not a traceback and 1
    (verify failed) or 120 (Python's failed flush at exit)."""
    done = _run_into_a_closed_pipe(args, unbuffered, tmp_path)
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--config-dir", "{conf}", "verify", "run/recipe.yaml"], "fix: optimize verify run/recipe.yaml"),
        (
            ["target=cpu", "verify", "my run/recipe.yaml", "--tolerance", "0.1"],
            "fix: optimize verify 'my run/recipe.yaml' --tolerance 0.1",
        ),
        (["--show-config", "verify"], "fix: optimize verify RECIPE"),
    ],
)
def test_verify_after_other_words_is_named_as_the_command_it_is(
    args: list[str], fix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    (conf / "workload").mkdir(parents=True)
    assert cli.main([a.format(conf=conf) for a in args]) == 2
    captured = capsys.readouterr()
    assert not captured.out
    assert captured.err.startswith("error: verify: comes first")
    assert "is not a command" not in captured.err
    assert fix in captured.err


def test_a_config_dir_named_verify_is_still_a_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "verify" / "workload").mkdir(parents=True)
    (tmp_path / "verify" / "workload" / "mine.yaml").write_text("max_new_tokens: 5\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--config-dir", "verify", "workload=mine", "--show-config"]) == 0
    assert "max_new_tokens: 5" in capsys.readouterr().out
