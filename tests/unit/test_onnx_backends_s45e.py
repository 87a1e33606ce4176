"""ONNX backends: the step engine's token count, the fp16 conversion's temp file, the exporter's
chatter, and what a candidate whose execution provider is unavailable says."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'wattsmith[ort]')")

from optimizer.backends.onnx import export as onnx_export  # noqa: E402
from optimizer.backends.onnx.export import MODEL_FILE  # noqa: E402
from optimizer.backends.onnx.kv_decoding import StepEngine  # noqa: E402
from optimizer.backends.ort_onnx import backend as ort_backend  # noqa: E402
from optimizer.backends.ort_onnx.backend import ProviderUnavailable, make_session  # noqa: E402
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings  # noqa: E402
from optimizer.space import Candidate  # noqa: E402
from unit.backends.onnx.test_kv_decoding import CountingSteps  # noqa: E402
from unit.factories import target_spec  # noqa: E402


def test_the_step_engine_refuses_zero_new_tokens_as_the_other_engines_do() -> None:
    steps = CountingSteps()
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        StepEngine(steps).generate(torch.tensor([[1, 2]]), 0)
    assert steps.calls == []  # refused before any step ran


def tiny_fp32_export(folder: Path) -> Path:
    """An fp32 `model.onnx` with its weight in external data, as the export writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir()
    weight = numpy_helper.from_array(np.linspace(-1, 1, 4096, dtype=np.float32), "w")
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4096]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", io[:1], io[1:], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / MODEL_FILE), save_as_external_data=True, location=f"{MODEL_FILE}.data")
    return folder


def test_fp16_conversion_writes_nothing_into_the_cached_fp32_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shape inference file goes into the fp16 variant's staging folder: a conversion killed
    there leaves nothing in the fp32 export (another artifact) that a later run would not clean."""
    import onnx
    import onnx.shape_inference

    from optimizer.backends.onnx.quantize import fp16, sys_path_kept

    with sys_path_kept():
        from onnxruntime.transformers import float16

    fp32_dir = tiny_fp32_export(tmp_path / "fp32")
    before = sorted(p.name for p in fp32_dir.iterdir())
    written: list[Path] = []
    real = onnx.shape_inference.infer_shapes_path

    def recording(model_path: str, output_path: str = "", *args: Any, **kwargs: Any) -> None:
        written.append(Path(output_path))
        real(model_path, output_path, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", recording)
    monkeypatch.setattr(float16, "infer_shapes_path", recording, raising=False)
    out = fp16(fp32_dir)

    assert written, "shapes are still inferred before the conversion"
    assert all(fp32_dir not in path.parents for path in written), written
    assert sorted(p.name for p in fp32_dir.iterdir()) == before
    assert sorted(p.name for p in out.iterdir()) == [MODEL_FILE, f"{MODEL_FILE}.data", "wattsmith-build.json"]
    converted = onnx.load(str(out / MODEL_FILE))
    assert converted.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [onnx.TensorProto.FLOAT]


def test_the_exporters_chatter_goes_to_the_debug_log_and_its_errors_to_ours(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """torch.onnx's own stderr handler printed a warning per torchvision op it skips (torchvision
    absent) between a search's progress lines."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "llama"
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=32
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")

    class Program:
        def save(self, path: str, external_data: bool) -> None:
            Path(path).write_bytes(b"")

    def exporting(*args: Any, **kwargs: Any) -> Program:
        registration.warning("torchvision is not installed. Skipping torchvision::nms")
        warnings.warn("torch.jit.TracerWarning: converting a tensor to a Python boolean", stacklevel=1)
        registration.error("a real exporter error")
        return Program()

    monkeypatch.setattr(torch.onnx, "export", exporting)
    # as a fresh process has it: an earlier test's in-process CLI run leaves its stderr handler
    # here, on a capture stream since closed, whose "Logging error" trace would quote this test
    ours = logging.getLogger("optimizer")
    monkeypatch.setattr(ours, "handlers", [])
    monkeypatch.setattr(ours, "propagate", True)
    caplog.set_level(logging.DEBUG, logger="optimizer")
    onnx_export.export_decoder(model_dir, tmp_path / MODEL_FILE)

    assert "torchvision" not in capfd.readouterr().err
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("torchvision::nms" in m for m in debug) and any("TracerWarning" in m for m in debug)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["torch.onnx._internal.exporter._registration: a real exporter error"]
    assert logging.getLogger("torch.onnx").handlers, "torch's own handler is back after the export"


def test_a_provider_this_onnxruntime_lacks_fails_before_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")

    def exporting(*args: Any) -> Path:
        raise AssertionError("exported before the provider was checked")

    monkeypatch.setattr(ort_backend, "onnx_model_for", exporting)
    candidate = Candidate(OrtOnnxSettings(provider="cuda"), 1, 1)
    with pytest.raises(ProviderUnavailable, match="could not use CUDAExecutionProvider") as caught:
        ort_backend.OrtOnnxBackend().build(None, candidate, target_spec(kind="cuda"), Path("unused"))  # type: ignore[arg-type]
    assert "built without it" in str(caught.value) and "onnxruntime-gpu" in str(caught.value)


def test_a_session_fallback_names_the_provider_and_what_it_needs(tmp_path: Path) -> None:
    import pickle

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    model_file = tiny_fp32_export(tmp_path / "fp32") / MODEL_FILE
    with pytest.raises(ProviderUnavailable) as caught:
        make_session(model_file, [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], 1)
    message = str(caught.value)
    assert (
        "could not use CUDAExecutionProvider" in message
        and "fell back to ['CPUExecutionProvider']" in message
    )
    assert "pip install 'wattsmith[gpu]'" in message and "NVIDIA GPU" in message
    assert str(pickle.loads(pickle.dumps(caught.value))) == message  # a worker's error survives pickling


def test_a_search_records_a_candidate_whose_provider_is_unavailable_as_failed_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target: Any
) -> None:
    """Not a crash: the evaluator makes any build failure the candidate's result (verify shows it
    as its `build and run` check); the reason names the provider and what it needs."""
    import onnxruntime as ort

    from optimizer.config import QualityConfig, SearchConfig, SloConfig, WorkloadConfig
    from optimizer.measure.workload import Workload
    from optimizer.results import FAILED
    from optimizer.search import evaluate as evaluate_module
    from optimizer.search.evaluate import Evaluator
    from unit.search.test_evaluate import VOCAB, CountingMeter, FakeEngine

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    model_file = tiny_fp32_export(tmp_path / "fp32") / MODEL_FILE

    def build_engine(model: Any, candidate: Candidate, target: Any, workdir: Path) -> Any:
        if isinstance(candidate.settings, OrtOnnxSettings):  # the session ORT's backend makes
            make_session(model_file, [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], 1)
        return FakeEngine(candidate.settings, [])  # the quality reference

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    evaluator = Evaluator(
        model=None,  # type: ignore[arg-type]  # only passed through to the fake build_engine
        target=make_target(),
        meter=CountingMeter(),
        workload=Workload(torch.randint(0, VOCAB, (4, 5)), 3),
        quality_tokens=torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1)),
        workload_cfg=WorkloadConfig(
            prompt_tokens=5,
            max_new_tokens=3,
            min_window_seconds=0.01,
            idle_seconds=0,
            slo=SloConfig(tpot_ms=None),
        ),
        quality_cfg=QualityConfig(),
        search_cfg=SearchConfig(),
        store=None,
        workdir=tmp_path,
    )
    result = evaluator.evaluate(Candidate(OrtOnnxSettings(provider="cuda"), 1, 1))
    assert result.status == FAILED
    assert str(result.reason).startswith(
        "ProviderUnavailable: ONNX Runtime could not use CUDAExecutionProvider"
    )
    assert "wattsmith[gpu]" in str(result.reason)
