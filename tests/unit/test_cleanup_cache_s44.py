"""The empty WATTSMITH_CACHE error has one text, the run config's: verify ends it with its own flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import verify
from optimizer.config.run import cache_dir_from
from optimizer.errors import UserError


def test_verify_and_the_run_config_refuse_an_empty_cache_variable_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", " ")
    with pytest.raises(UserError) as run_error:
        cache_dir_from({"WATTSMITH_CACHE": " "})
    with pytest.raises(UserError) as verify_error:
        verify._default_cache()
    run, verifys = run_error.value, verify_error.value
    assert (
        (verifys.field, verifys.problem)
        == (run.field, run.problem)
        == ("WATTSMITH_CACHE", "is set but empty")
    )
    shared = run.fix.partition(";")[0]
    assert shared.startswith("unset it (unset WATTSMITH_CACHE") and verifys.fix.startswith(shared)
    assert "--cache-dir DIR" in verifys.fix and "cache_dir=" not in verifys.fix
    assert "`optimize cache_dir=DIR`" in run.fix


def test_verify_reads_the_variable_as_the_run_config_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATTSMITH_CACHE", "~/somewhere")
    assert verify._default_cache() == Path("~/somewhere").expanduser()
