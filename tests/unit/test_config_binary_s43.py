"""A binary preset in the user's config folder was blamed on the command line ('overrides:
utf-8 codec can't decode ...', fix 'overrides look like group=preset')."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.config.compose import compose_run_config
from optimizer.errors import UserError


def test_a_binary_preset_names_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "workload").mkdir()
    (tmp_path / "workload" / "bin.yaml").write_bytes(b"\xff\xfe\x00\x89PNG")
    with pytest.raises(UserError) as info:
        compose_run_config(["workload=bin"], tmp_path)
    assert info.value.field == "--config-dir" and "not UTF-8 text" in info.value.problem
