"""The packaged SmolLM2 GGUF, found the way `model=smollm2` finds it, for the llama.cpp tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.model import _packaged_gguf


@pytest.fixture(scope="module")
def gguf() -> Path:
    try:
        return _packaged_gguf("smollm2")[0]
    except UserError as error:
        pytest.skip(str(error))
