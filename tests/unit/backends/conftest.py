"""Fixtures for the backends' tests: which optional runtimes the rules see as installed."""

from __future__ import annotations

from collections.abc import Callable, Set

import pytest

from optimizer.backends import installed as installed_module


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Pretend exactly the given modules and distributions are installed."""

    def install(modules: Set[str] = frozenset(), distributions: Set[str] = frozenset()) -> None:
        monkeypatch.setattr(installed_module, "has_module", lambda name: name in modules)
        monkeypatch.setattr(installed_module, "has_distribution", lambda name: name in distributions)

    return install


@pytest.fixture
def cpu_ort() -> frozenset[str]:
    """The modules of the CPU ONNX Runtime extra (`wattsmith[ort]`)."""
    return frozenset({"onnxruntime", "onnxruntime_genai", "onnx", "onnx_ir", "onnxscript"})
