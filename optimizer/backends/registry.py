"""The table of backends: settings type -> spec, and backend name -> spec (for `Candidate.from_dict`).

Keyed by settings type so that a type checker follows the dispatch. Specs are light; a backend's
heavy dependencies are imported only when its spec builds an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.backends.base import BackendSpec, Engine
from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.backends.llamacpp.spec import SPEC as LLAMACPP
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_genai.spec import SPEC as ORT_GENAI
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.ort_onnx.spec import SPEC as ORT_ONNX
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.backends.tensorrt.spec import SPEC as TENSORRT
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch.spec import SPEC as TORCH
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.backends.torch_cb.spec import SPEC as TORCH_CB

if TYPE_CHECKING:
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec

BackendSettings = (
    TorchSettings
    | ContinuousBatchingSettings
    | OrtGenaiSettings
    | OrtOnnxSettings
    | TensorRTSettings
    | LlamaCppSettings
)

# In this order the report lists backends.
SPECS: dict[type[BackendSettings], BackendSpec[Any]] = {
    TorchSettings: TORCH,
    ContinuousBatchingSettings: TORCH_CB,
    OrtGenaiSettings: ORT_GENAI,
    OrtOnnxSettings: ORT_ONNX,
    TensorRTSettings: TENSORRT,
    LlamaCppSettings: LLAMACPP,
}
SPECS_BY_NAME: dict[str, BackendSpec[Any]] = {spec.name: spec for spec in SPECS.values()}


def spec_for(settings: BackendSettings) -> BackendSpec[Any]:
    """The spec of the backend these settings belong to."""
    spec = SPECS.get(type(settings))
    if spec is None:
        raise TypeError(f"no backend spec for settings of type {type(settings).__name__}")
    return spec


def serves_gguf(backend: str) -> bool:
    """Whether the backend's engine loads a GGUF model's file itself (llama.cpp), so that the
    model needs no Hugging Face conversion to be served."""
    return bool(getattr(SPECS_BY_NAME.get(backend), "serves_gguf", False))


def build_engine(model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
    return spec_for(candidate.settings).build(model, candidate, target, workdir)
