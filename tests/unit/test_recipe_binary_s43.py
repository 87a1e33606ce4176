"""A binary file passed as the recipe: a UnicodeDecodeError traceback, exit 1 (verify's 'failed')."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.recipe import read_recipe


def test_a_binary_recipe_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(UserError) as info:
        read_recipe(path)
    assert info.value.field == "recipe" and "not a text file" in info.value.problem
