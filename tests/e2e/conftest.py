"""Shared by the e2e tests: the cache of converted weights and builds, reused across the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Reuse the CI cache (converted GGUF, ORT builds) when set, else a session temp dir.
    env = os.environ.get("WATTSMITH_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")
