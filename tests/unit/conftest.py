"""Fixtures of the unit tests: the factories of factories.py (targets, candidates, hand-made
results) as fixtures returning functions, so that any test module can use them without importing
from a test package; offline hub settings; a cache dir that is never ~/.cache."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

# Unit tests are offline: nothing may reach the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from optimizer.measure.quality import QualityResult
from optimizer.measure.workload import PerformanceResult
from optimizer.results import CandidateResult
from optimizer.space import Candidate
from optimizer.target import TargetSpec
from unit.factories import candidate_result, performance_result, quality_result, target_spec, torch_candidate


@pytest.fixture(autouse=True)
def _never_home_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No unit test writes to ~/.cache/wattsmith: WATTSMITH_CACHE always points into a tmp dir."""
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path_factory.getbasetemp() / "wattsmith-cache"))


@pytest.fixture
def make_target() -> Callable[..., TargetSpec]:
    """A TargetSpec built directly (no detection): a 4-core bf16 CPU unless overridden."""
    return target_spec


@pytest.fixture
def make_candidate() -> Callable[..., Candidate]:
    return torch_candidate


@pytest.fixture
def make_quality() -> Callable[..., QualityResult]:
    return quality_result


@pytest.fixture
def make_performance() -> Callable[..., PerformanceResult]:
    return performance_result


@pytest.fixture
def make_result() -> Callable[..., CandidateResult]:
    return candidate_result
