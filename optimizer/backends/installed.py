"""Which optional inference runtimes are installed, found without importing them.

The space's validity rules ask this for every candidate, so it must be cheap and must never load
a native library or initialize CUDA: it looks at module specs and distribution metadata only.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from importlib import metadata
from pathlib import Path

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


def distribution_version(*names: str) -> str | None:
    """The first of `names` installed, with its version ("onnxruntime 1.22.0"), or None. Several
    names: the variants that install one module (onnxruntime / onnxruntime-gpu). Not cached:
    cache keys read it, and an upgrade in a long-lived process must change them."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


ONNX_RUNTIME = ("onnxruntime", "onnxruntime-gpu")
# modules whose distributions version TensorRT: pip's wheels put the libraries an engine must
# match in tensorrt_libs; a system install has only the module, from the same release
TENSORRT_MODULES = ("tensorrt_libs", "tensorrt")


def tensorrt_version() -> str | None:
    """The installed TensorRT ("tensorrt-cu12-libs 10.9.0.34"), or None, read from distribution
    metadata: its libraries are not loaded. Not cached, as distribution_version."""
    provided = metadata.packages_distributions()
    for module in TENSORRT_MODULES:
        if names := provided.get(module):
            return distribution_version(*names)
    return None


# (module, distribution) that genai's model builder imports beyond onnxruntime-genai's own pip
# requirements (numpy, onnxruntime): a build would fail with a bare ModuleNotFoundError
GENAI_BUILDER_MODULES = (("onnx_ir", "onnx-ir"), ("onnx", "onnx"))
# what our ONNX export runs: the dynamo exporter (onnxscript, onnx), then ONNX Runtime's constant
# folding (fold_constants), whatever runtime takes the model afterwards
EXPORT_MODULES = (("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("onnxscript", "onnxscript"))


def missing_genai(provider: str) -> str | None:
    """Why onnxruntime-genai cannot build and run on `provider` here, or None when it can."""
    if not has_module("onnxruntime_genai"):
        return f"ort-genai needs onnxruntime-genai ({ORT_EXTRA})"
    extra = GPU_EXTRA if provider == "cuda" else ORT_EXTRA
    for module, package in GENAI_BUILDER_MODULES:
        if not has_module(module):
            return f"ort-genai's model builder needs {package} ({extra})"
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
    for module, package in EXPORT_MODULES:
        if not has_module(module):
            return f"ort-onnx needs {package} ({ORT_EXTRA})"
    if provider in ("cuda", "tensorrt") and not has_distribution("onnxruntime-gpu"):
        return f"the {provider} execution provider needs onnxruntime-gpu ({GPU_EXTRA})"
    if provider == "tensorrt" and not has_module("tensorrt"):
        return f"the TensorRT execution provider needs the TensorRT libraries ({TENSORRT_EXTRA})"
    return None


def missing_tensorrt() -> str | None:
    """Why a native TensorRT engine (of any precision) cannot be built here, or None when it can."""
    if not has_module("tensorrt"):
        return f"tensorrt is not installed ({TENSORRT_EXTRA})"
    for module, package in EXPORT_MODULES:
        if not has_module(module):
            # a GPU target: the GPU extra, whose onnxruntime-gpu is what its other backends run
            return f"the TensorRT backend exports ONNX first: it needs {package} ({GPU_EXTRA})"
    return None


LLAMACPP_EXTRA = "pip install 'wattsmith[llamacpp]' (the first install builds llama.cpp from source)"
LLAMACPP_CUDA = "CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir llama-cpp-python"


@cache
def llamacpp_package_dir() -> Path | None:
    """The installed llama_cpp package's directory, located without importing it."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def llamacpp_has_cuda() -> bool:
    """Whether the installed llama-cpp-python was built with CUDA: its CUDA library is beside the
    others. Read from the files, not from `llama_supports_gpu_offload()`, which would load the
    library (and initialize CUDA) while the rules are only being evaluated."""
    package = llamacpp_package_dir()
    return package is not None and any(package.rglob("*ggml-cuda*"))


@cache
def llamacpp_ftypes() -> frozenset[str]:
    """The weight types the installed library's quantizer knows (`LLAMA_FTYPE_*` names without
    their MOSTLY_/ALL_ prefix), read from its bindings' source without loading the library."""
    package = llamacpp_package_dir()
    bindings = package / "llama_cpp.py" if package else None
    if bindings is None or not bindings.is_file():
        return frozenset()
    names = re.findall(r"^LLAMA_FTYPE_(?:MOSTLY_|ALL_)?(\w+) = \d+", bindings.read_text(), re.MULTILINE)
    return frozenset(names) - {"GUESSED"}


def missing_llamacpp(cuda: bool) -> str | None:
    """Why llama.cpp cannot run here (on a GPU when `cuda`), or None when it can."""
    if not has_module("llama_cpp"):
        return f"llamacpp needs llama-cpp-python ({LLAMACPP_EXTRA})"
    if cuda and not llamacpp_has_cuda():
        return f"a GPU target needs a CUDA build of llama-cpp-python; the installed one runs on the CPU only ({LLAMACPP_CUDA})"
    return None
