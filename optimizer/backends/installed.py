"""Which optional inference runtimes are installed, found without importing them.

The space's validity rules ask this for every candidate, so it must be cheap and must never load
a native library or initialize CUDA: it looks at module specs and distribution metadata only.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from importlib import metadata

ORT_EXTRA = "pip install 'wattsmith[ort]'"
GPU_EXTRA = "pip install 'wattsmith[gpu]' (after pip uninstall onnxruntime onnxruntime-genai)"
TENSORRT_EXTRA = "pip install 'wattsmith[tensorrt]'"


@cache
def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def has_distribution(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_genai(provider: str) -> str | None:
    """Why onnxruntime-genai cannot run on `provider` here, or None when it can."""
    if not has_module("onnxruntime_genai"):
        return f"ort-genai needs onnxruntime-genai ({ORT_EXTRA})"
    if provider == "cuda" and not has_distribution("onnxruntime-genai-cuda"):
        return f"ort-genai on CUDA needs onnxruntime-genai-cuda ({GPU_EXTRA})"
    return None


GENAI_ENGINE_VERSION = (0, 18)  # onnxruntime-genai's Engine / Request API (its own scheduler)


def missing_genai_engine() -> str | None:
    """Why onnxruntime-genai has no Engine API here (installed and older than 0.18), or None."""
    for name in ("onnxruntime-genai", "onnxruntime-genai-cuda"):
        if has_distribution(name):
            version = metadata.version(name)
            if _release(version) < GENAI_ENGINE_VERSION:
                return f"{name} {version} has no Engine API (0.18+)"
    return None


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string: "0.18.0rc1" -> (0, 18)."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", part)) else 0 for part in version.split(".")[:2])


def missing_onnx_runtime(provider: str) -> str | None:
    """Why an ONNX Runtime session with `provider` cannot run here, or None when it can."""
    for module, package in (("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("onnxscript", "onnxscript")):
        if not has_module(module):
            return f"ort-onnx needs {package} ({ORT_EXTRA})"
    if provider in ("cuda", "tensorrt") and not has_distribution("onnxruntime-gpu"):
        return f"the {provider} execution provider needs onnxruntime-gpu ({GPU_EXTRA})"
    if provider == "tensorrt" and not has_module("tensorrt"):
        return f"the TensorRT execution provider needs the TensorRT libraries ({TENSORRT_EXTRA})"
    return None


def missing_tensorrt() -> str | None:
    """Why a native TensorRT engine cannot be built here, or None when it can."""
    if not has_module("tensorrt"):
        return f"tensorrt is not installed ({TENSORRT_EXTRA})"
    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript")):
        if not has_module(module):
            return f"the TensorRT backend exports ONNX first: it needs {package} ({ORT_EXTRA})"
    return None
