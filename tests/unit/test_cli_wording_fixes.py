"""Wording of a few messages: an empty preset name, a lease taken over, the extras the space adds,
search.max_candidates' fix."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer import pipeline
from optimizer.config import compose_run_config
from optimizer.config.presets import GROUPS
from optimizer.config.search import SearchConfig
from optimizer.errors import UserError
from optimizer.search.plan import SearchPlan
from optimizer.space import enumerate_candidates
from optimizer.store import TrialStore
from optimizer.store.leases import worker_identity
from unit.factories import SMOLLM2_SHAPE, target_spec


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "model"])  # model= names model.source
@pytest.mark.parametrize("name", ["", " "])
def test_an_empty_preset_name_names_the_group_and_its_presets(group: str, name: str) -> None:
    with pytest.raises(UserError) as info:
        compose_run_config([f"{group}={name}"])
    assert (info.value.field, info.value.problem) == (group, "needs a preset name")
    assert info.value.fix.startswith("use one of ['")
    assert "Config search path" not in str(info.value)


def test_an_unknown_preset_name_is_still_named() -> None:
    with pytest.raises(UserError, match="no preset named 'nope'"):
        compose_run_config(["space=nope"])


def test_a_lease_taken_from_a_dead_worker_names_the_candidate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    exited = subprocess.Popen(["true"])
    exited.wait()
    dead = TrialStore(path, "ctx", worker=f"{worker_identity().rsplit(':', 2)[0]}:{exited.pid}:gone")
    assert dead.claim("60e6bce4d8facddd", 3600)
    with caplog.at_level(logging.WARNING, logger="optimizer.store.leases"):
        assert TrialStore(path, "ctx").claim("60e6bce4d8facddd", 60, label="torch bf16 b8 t4")
    (message,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert message.startswith("took over torch bf16 b8 t4 from ")
    assert "60e6bce4d8facddd" not in message


class _Logged(Exception):
    """Stops `_optimize` once the space's line is logged."""


def test_the_space_line_counts_the_valid_extras_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    extra = (
        "space.extra=[{backend: torch, batch_size: 8},"  # valid
        "{backend: torch, batch_size: 16, precision: fp16},"  # excluded: no fp16 on this CPU
        "{backend: torch, batch_size: 32, precision: fp16}]"
    )
    cfg = compose_run_config(
        ["target=cpu", "space.backends=[torch]", "space.batch_sizes=[1]", extra, f"cache_dir={tmp_path}"]
    )
    target = target_spec()
    valid, excluded = enumerate_candidates(cfg.space, target, False, SMOLLM2_SHAPE, "hf-dir")
    plan = SearchPlan(valid, [], excluded, valid[-1], "ctx", "qctx")
    model = SimpleNamespace(name="m", format="hf-dir", weight_sha256="ab" * 32, shape=SMOLLM2_SHAPE)
    setup = SimpleNamespace(model=model, target=target)
    monkeypatch.setattr(pipeline, "open_database", lambda _path: None)
    monkeypatch.setattr(pipeline, "prepare_run_measurement", lambda _cfg, _dir: setup)
    monkeypatch.setattr(pipeline, "plan_search", lambda _cfg, _setup: plan)

    def stop(_target: object) -> None:
        raise _Logged

    monkeypatch.setattr(pipeline, "_warn_if_busy", stop)
    with caplog.at_level(logging.INFO, logger="optimizer.pipeline"), pytest.raises(_Logged):
        pipeline._optimize(cfg, tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("space:")]
    assert line.endswith(
        "; space.extra adds 1 of them and 2 of those excluded or pruned (space.extra=[] leaves them out)"
    )


def test_the_space_line_does_not_count_an_extra_already_on_the_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = compose_run_config(
        ["target=cpu", "space.backends=[torch]", "space.batch_sizes=[1,8]", "space.extra=[{batch_size: 8}]"]
    )
    target = target_spec()
    valid, excluded = enumerate_candidates(cfg.space, target, False, SMOLLM2_SHAPE, "hf-dir")
    plan = SearchPlan(valid, [], excluded, valid[0], "ctx", "qctx")
    setup = SimpleNamespace(model=SimpleNamespace(shape=SMOLLM2_SHAPE, format="hf-dir"), target=target)
    note = pipeline.extras_note(cfg, plan, setup)  # type: ignore[arg-type]
    assert note.startswith("; space.extra adds 0 of them (")


def test_max_candidates_fix_gives_an_example() -> None:
    with pytest.raises(UserError) as info:
        SearchConfig(max_candidates=0)
    assert info.value.field == "search.max_candidates"
    assert info.value.fix == "e.g. 20, or null for no cap"
