"""The torch backend's build: settings that must reach what it builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from optimizer.backends.torch.backend import TorchBackend
from optimizer.backends.torch.settings import TorchSettings
from optimizer.config import ModelConfig
from optimizer.model import ModelSpec, resolve_model
from optimizer.space import Candidate

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), tmp_path_factory.mktemp("cache"))


def build_compiled(spec: ModelSpec, workdir: Path, make_target) -> None:
    settings = TorchSettings(kv_cache="static", compile=True)
    TorchBackend().build(spec, Candidate(settings, 1, 1), make_target(cores=2), workdir).close()


def test_compiled_kernels_land_in_the_run_cache_after_torch_wrote_its_default(
    tiny_spec: ModelSpec, tmp_path: Path, make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing torch._dynamo (as transformers' cache_utils does, through hqq) writes torch's
    /tmp default into the variable: that is no user's choice, and must not keep the kernels
    out of the run's cache."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    assert cache_dir() == os.path.abspath(default_cache_dir())  # what the import leaves behind
    build_compiled(tiny_spec, tmp_path, make_target)
    assert os.environ[INDUCTOR_ENV] == str(tmp_path / "inductor")
    assert cache_dir() == str(tmp_path / "inductor")


def test_a_user_chosen_inductor_cache_is_kept(
    tiny_spec: ModelSpec, tmp_path: Path, make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = str(tmp_path / "mine")
    monkeypatch.setenv(INDUCTOR_ENV, mine)
    build_compiled(tiny_spec, tmp_path / "run", make_target)
    assert os.environ[INDUCTOR_ENV] == mine


def test_an_uncompiled_build_leaves_the_variable_alone(
    tiny_spec: ModelSpec, tmp_path: Path, make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    settings = TorchSettings(kv_cache="static")
    TorchBackend().build(tiny_spec, Candidate(settings, 1, 1), make_target(cores=2), tmp_path).close()
    assert INDUCTOR_ENV not in os.environ


def test_a_compiled_generate_may_add_graphs_past_dynamos_default_limit(
    tiny_spec: ModelSpec, tmp_path: Path, make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate compiles every torch candidate's forward as a graph of transformers' one wrapped
    forward (a dtype, quantization or thread count each): at dynamo's default of 8 graphs, the
    search's ninth compiled candidate ran eager, measured as compiled."""
    import torch

    from optimizer.backends.torch.compiling import RECOMPILE_LIMIT

    settings = TorchSettings(kv_cache="static", compile=True)
    engine = TorchBackend().build(tiny_spec, Candidate(settings, 1, 1), make_target(cores=2), tmp_path)
    limits = []

    def generate(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        # stands in for the compiled generate (minutes on a CPU): the limit it would compile under
        limits.append(torch._dynamo.config.recompile_limit)
        return torch.cat([input_ids, input_ids[:, :2]], dim=1)

    monkeypatch.setattr(engine.model, "generate", generate)
    try:
        with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default
            assert engine.generate(torch.ones(1, 4, dtype=torch.long), 2).new_tokens == 2
            assert torch._dynamo.config.recompile_limit == 8  # raised only while generating
    finally:
        engine.close()
    assert limits == [RECOMPILE_LIMIT]
