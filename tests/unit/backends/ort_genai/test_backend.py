"""onnxruntime-genai backend: the builder command, cached builds, generation and scoring on a tiny
random Llama, and broken builds as clear errors (and FAILED candidates)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai (pip install 'wattsmith[ort]')")

from optimizer.backends.ort_genai.backend import (  # noqa: E402
    GenaiBuildError,
    OrtGenaiEngine,
    build_dir_for,
    builder_command,
    ensure_build,
    log_tail,
)
from optimizer.backends.ort_genai.settings import OrtGenaiSettings  # noqa: E402
from optimizer.backends.registry import build_engine  # noqa: E402
from optimizer.config import ModelConfig, QualityConfig, SearchConfig, SloConfig, WorkloadConfig  # noqa: E402
from optimizer.model import ModelSpec, resolve_model  # noqa: E402
from optimizer.results import FAILED  # noqa: E402
from optimizer.space import Candidate  # noqa: E402
from optimizer.target import TargetSpec  # noqa: E402
from unit.factories import target_spec  # noqa: E402

VOCAB = 49152
INT4_LM_HEAD = OrtGenaiSettings(precision="int4", accuracy_level=4, int8_lm_head=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("genai-cache")


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir: Path, workdir: Path) -> ModelSpec:
    return resolve_model(ModelConfig(source=str(tiny_model_dir)), workdir)


@pytest.fixture(scope="module")
def cpu_target() -> TargetSpec:
    return target_spec(cores=2, bf16=False, energy_source="estimate")


@pytest.fixture(scope="module")
def fp32_engine(tiny_spec: ModelSpec, workdir: Path, cpu_target: TargetSpec) -> Iterator[OrtGenaiEngine]:
    engine = build_engine(tiny_spec, Candidate(OrtGenaiSettings(), 2, 1), cpu_target, workdir)
    assert isinstance(engine, OrtGenaiEngine)
    yield engine
    engine.close()


def test_builder_command_names_every_option(tmp_path: Path) -> None:
    fp32 = builder_command(Path("/m"), tmp_path, OrtGenaiSettings())
    assert fp32[1:3] == ["-m", "onnxruntime_genai.models.builder"]
    assert fp32[fp32.index("-p") + 1] == "fp32" and fp32[fp32.index("-e") + 1] == "cpu"
    assert "--extra_options" not in fp32
    int4 = builder_command(Path("/m"), tmp_path, replace(INT4_LM_HEAD, algorithm="k_quant", block_size=64))
    extra = int4[int4.index("--extra_options") + 1 :]
    assert extra == [
        "algo_config=k_quant",
        "block_size=64",
        "accuracy_level=4",
        "matmul_mixed_precision=last_matmul:int8",
    ]


def test_build_dirs_are_keyed_by_weights_and_options(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    a = build_dir_for(tiny_spec, OrtGenaiSettings(), tmp_path)
    assert a == build_dir_for(tiny_spec, OrtGenaiSettings(), tmp_path)
    assert a != build_dir_for(tiny_spec, OrtGenaiSettings(precision="int8"), tmp_path)
    assert a != build_dir_for(replace(tiny_spec, weight_sha256="0" * 64), OrtGenaiSettings(), tmp_path)
    assert a.parent == tmp_path / "ort-genai"


def test_log_tail_prefers_the_error_line() -> None:
    log = "Loading\rSaving x: 10%|# | 1/10 [00:00<00:00, 3.0it/s]\nTraceback\n  File x\nValueError: cannot reshape\n"
    assert log_tail(log) == "ValueError: cannot reshape"
    assert log_tail("step one\nstep two\n") == "step one | step two"
    assert log_tail("") == "(no output)"


def test_the_generator_refuses_more_sequences_than_the_rule_allows(fp32_engine: OrtGenaiEngine) -> None:
    """The library limit behind GENERATOR_MAX_BATCH: if a release lifts it, this says so."""
    from optimizer.backends.ort_genai.spec import GENERATOR_MAX_BATCH

    prompts = torch.randint(
        0, VOCAB, (GENERATOR_MAX_BATCH + 1, 3), generator=torch.Generator().manual_seed(0)
    )
    with pytest.raises(RuntimeError, match=rf"batch_size \({GENERATOR_MAX_BATCH + 1}\) must be in \[1, 32\]"):
        fp32_engine.generate(prompts, 2)
    assert fp32_engine.generate(prompts[:GENERATOR_MAX_BATCH], 2).batch_size == GENERATOR_MAX_BATCH


@pytest.mark.slow
def test_fp32_build_generates_exactly_and_scores_like_torch(
    fp32_engine: OrtGenaiEngine, tiny_spec: ModelSpec
) -> None:
    from transformers import AutoModelForCausalLM

    prompts = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    gen = fp32_engine.generate(prompts, 5)
    assert (gen.batch_size, gen.new_tokens) == (2, 5)
    assert 0 < gen.ttft_seconds <= gen.total_seconds
    assert gen.token_ids is not None and gen.token_ids.shape == (2, 5) and gen.token_ids.dtype == torch.int64
    again = fp32_engine.generate(prompts, 5)
    assert again.token_ids is not None and torch.equal(gen.token_ids, again.token_ids)

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_spec.path)).eval()
    with torch.inference_mode():
        expected_logits = reference(input_ids=prompts).logits
        expected_tokens = reference.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
        )[:, 7:]
    logits = fp32_engine.score(prompts)
    assert logits.shape == (2, 7, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected_logits, rtol=1e-3, atol=1e-3)
    assert torch.equal(gen.token_ids, expected_tokens)


@pytest.mark.slow
def test_a_cached_build_is_reused(
    fp32_engine: OrtGenaiEngine, tiny_spec: ModelSpec, workdir: Path, monkeypatch
) -> None:
    def no_builder(*args, **kwargs):
        raise AssertionError("the builder ran again")

    monkeypatch.setattr(subprocess, "run", no_builder)
    path = ensure_build(tiny_spec, OrtGenaiSettings(), workdir)
    assert path == fp32_engine.build_dir
    provenance = json.loads((path / "wattsmith-build.json").read_text())
    assert provenance["options"]["precision"] == "fp32" and provenance["seconds"] > 0
    assert not (path / "builder-cache").exists()


@pytest.mark.slow
def test_threads_reach_the_session(fp32_engine: OrtGenaiEngine, monkeypatch) -> None:
    import onnxruntime_genai as og

    overlays: list[dict] = []
    real_config = og.Config

    class RecordingConfig(real_config):  # type: ignore[misc, valid-type]
        def overlay(self, text: str) -> None:
            overlays.append(json.loads(text))
            super().overlay(text)

    monkeypatch.setattr(og, "Config", RecordingConfig)
    engine = OrtGenaiEngine.load(fp32_engine.build_dir, OrtGenaiSettings(), threads=2)
    engine.close()
    assert overlays == [
        {"model": {"decoder": {"session_options": {"intra_op_num_threads": 2, "inter_op_num_threads": 1}}}}
    ]


@pytest.mark.slow
def test_a_build_that_does_not_load_is_a_failed_candidate(
    tiny_spec: ModelSpec, workdir: Path, cpu_target
) -> None:
    """int4 with an int8 lm_head and the default algorithm: the builder exits 0, the model does not load."""
    from optimizer.measure.energy import EstimateMeter
    from optimizer.measure.workload import Workload
    from optimizer.search.evaluate import Evaluator

    evaluator = Evaluator(
        model=tiny_spec,
        target=cpu_target,
        meter=EstimateMeter(2, 5.0, 1.5),
        workload=Workload(torch.randint(0, VOCAB, (2, 4)), 2),
        quality_tokens=torch.randint(0, VOCAB, (2, 8)),
        workload_cfg=WorkloadConfig(
            prompt_tokens=4, max_new_tokens=2, min_window_seconds=0.01, repeats=1, slo=SloConfig()
        ),
        quality_cfg=QualityConfig(),
        search_cfg=SearchConfig(),
        store=None,
        workdir=workdir,
    )
    result = evaluator.evaluate(Candidate(INT4_LM_HEAD, 1, 1))
    assert result.status == FAILED and result.performance is None
    assert result.reason is not None and result.reason.startswith(
        "GenaiBuildError: onnxruntime-genai cannot load"
    )
    assert "lm_head.MatMul.weight_Q8G32" in result.reason  # the runtime's own words


@pytest.mark.slow
def test_a_builder_failure_carries_its_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "unsupported"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text()) | {
        "architectures": ["WattsmithLMHeadModel"]
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    spec = ModelSpec("bad", "bad", model_dir, "hf-dir", "f" * 64, False, None, None)  # type: ignore[arg-type]
    with pytest.raises(GenaiBuildError) as info:
        ensure_build(spec, OrtGenaiSettings(), tmp_path / "cache")
    message = str(info.value)
    assert "model builder exited 1: NotImplementedError" in message and "not currently supported" in message
    assert not [p for p in (tmp_path / "cache" / "ort-genai").iterdir() if ".tmp-" in p.name]
    assert list((tmp_path / "cache" / "ort-genai").glob("*.builder.log"))  # the log stays for the user
    assert not list((tmp_path / "cache" / "ort-genai").glob("*/wattsmith-build.json"))  # nothing cached
