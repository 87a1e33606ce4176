"""The llama.cpp backend's defects found in s43: where the model's layers and matmuls run, and
a quality probe that depended on settings its cache key leaves out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")

from optimizer.backends.llamacpp import backend, native  # noqa: E402
from optimizer.backends.llamacpp.engine import LlamaCppEngine  # noqa: E402
from optimizer.backends.llamacpp.errors import LlamaCppBuildError  # noqa: E402
from optimizer.backends.llamacpp.settings import LlamaCppSettings  # noqa: E402
from optimizer.errors import UserError  # noqa: E402
from optimizer.model import _packaged_gguf  # noqa: E402


def loaded_params(monkeypatch: pytest.MonkeyPatch, target: Any) -> tuple[int, int, int]:
    """(n_gpu_layers, split_mode, main_gpu) that building a candidate for `target` hands to
    llama_model_load_from_file (the load itself stops there)."""
    seen: list[tuple[int, int, int]] = []

    def load(path: bytes, params: Any) -> None:
        seen.append((params.n_gpu_layers, params.split_mode, params.main_gpu))
        return None  # a NULL model: the build stops with llama.cpp's "cannot load"

    monkeypatch.setattr(native.lib(), "llama_model_load_from_file", load)
    monkeypatch.setattr(native, "supports_gpu_offload", lambda: True)
    monkeypatch.setattr(backend, "prepared_gguf", lambda *args: Path("model.gguf"))
    candidate = SimpleNamespace(settings=LlamaCppSettings(), threads=2, batch_size=1)
    with pytest.raises(LlamaCppBuildError, match="cannot load model.gguf"):
        backend.build(None, candidate, target, Path("/nonexistent"))  # type: ignore[arg-type]
    (params,) = seen
    return params


def test_a_gpu_target_loads_every_layer_on_its_own_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's default split_mode (LAYER) spread the layers over every visible GPU, whatever
    target.device_index said: on a multi-GPU host the meter read one board of several."""
    target = SimpleNamespace(is_cuda=True, gpu=SimpleNamespace(index=1), cores=8)
    c = native.lib()
    assert loaded_params(monkeypatch, target) == (999, c.LLAMA_SPLIT_MODE_NONE, 1)  # 999: every layer


def test_a_cpu_target_uses_no_gpu_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no layer offloaded a CUDA build still kept every GPU in the model's devices and sent
    a prompt's matmuls to one (op offload): a CPU target's numbers counted a GPU's work."""
    target = SimpleNamespace(is_cuda=False, gpu=None, cores=2)
    assert loaded_params(monkeypatch, target) == (0, native.lib().LLAMA_SPLIT_MODE_NONE, -1)


@pytest.fixture(scope="module")
def gguf() -> Path:
    try:
        return _packaged_gguf("smollm2")[0]
    except UserError as error:
        pytest.skip(str(error))


def test_the_quality_probe_is_the_same_for_every_micro_batch(gguf: Path) -> None:
    """Candidates that differ only in n_batch / n_ubatch share one quality probe (probe_settings
    leave them out), but score() ran with the candidate's n_ubatch: SmolLM2's logits moved by up
    to 1.46 and a greedy token flipped, so the shared result depended on which ran first."""
    ids = torch.randint(100, 40_000, (2, 150), generator=torch.Generator().manual_seed(0))
    settings = (LlamaCppSettings(), LlamaCppSettings(n_batch=64, n_ubatch=32))
    assert settings[0].probe_settings() == settings[1].probe_settings()
    logits = []
    for s in settings:
        engine = LlamaCppEngine(gguf, s, threads=2, sequences=2)
        try:
            logits.append(engine.score(ids))
        finally:
            engine.close()
    assert torch.allclose(logits[0], logits[1], atol=1e-3)
