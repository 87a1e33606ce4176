"""Native TensorRT backend: an engine built by TensorRT's own builder from the exported decoder.

The engine is built from the same ONNX as the ort-onnx backend (the QDQ model for int8: explicit
quantization with the calibrated scales), with one optimization profile for batch, sequence and
past length, and the fp16/int8 builder flags (TF32 cleared: fp32 is IEEE fp32). Serialized engines
and the timing cache live in the run's cache, keyed by (ONNX model, precision, builder flags,
profile, TensorRT version, GPU). The decode loop
keeps every tensor on the GPU (torch CUDA buffers); only the next token ids come back.

Needs an NVIDIA GPU, CUDA torch and `pip install 'wattsmith[tensorrt]'`.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from optimizer.backends.artifacts import artifact_key, cached_artifact
from optimizer.backends.base import load_check
from optimizer.backends.onnx.export import (
    INPUT_IDS,
    LOGITS,
    LOGITS_POSITIONS,
    MODEL_FILE,
    NEXT_TOKEN,
    DecoderLayout,
    exported_decoder,
    layout_of,
)
from optimizer.backends.onnx.kv_decoding import StepEngine
from optimizer.backends.onnx.quantize import static_int8_qdq
from optimizer.backends.onnx.trt_profile import TRT_MAX_TOKENS, check_context, profile_batch, profile_dims
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.model import ModelSpec
from optimizer.target import TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate

log = logging.getLogger(__name__)

ENGINE_FILE = "decoder.engine"
WORKSPACE_BYTES = 4 << 30


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


class TensorRTBackend:
    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> StepEngine:
        settings = candidate.settings
        assert isinstance(settings, TensorRTSettings)
        if not target.is_cuda or target.gpu is None:
            raise TensorRTBuildError("TensorRT engines need an NVIDIA GPU target")
        base = exported_decoder(model, workdir)
        onnx_dir = static_int8_qdq(base, model) if settings.precision == "int8" else base
        max_batch = profile_batch(candidate.batch_size)
        engine_dir = ensure_engine(onnx_dir, settings, max_batch, target, workdir)
        steps = TensorRTSteps.load(engine_dir / ENGINE_FILE, torch.device(target.device), max_batch)
        engine = StepEngine(steps)
        load_check(engine, TensorRTBuildError)  # a serialized engine may still fail to run
        return engine


def engine_identity(
    onnx_dir: Path, settings: TensorRTSettings, max_batch: int, target: TargetSpec
) -> dict[str, Any]:
    import tensorrt as trt

    assert target.gpu is not None
    return {
        "onnx": f"{onnx_dir.parent.name}/{onnx_dir.name}",
        "precision": settings.precision,
        "flags": list(builder_flags(settings.precision, target.fp16)),
        "max_batch": max_batch,
        "max_tokens": TRT_MAX_TOKENS,
        "tensorrt": trt.__version__,
        "gpu": target.gpu.name,
        "compute_capability": target.gpu.compute_capability,
    }


def builder_flags(precision: str, fp16: bool) -> tuple[str, ...]:
    """The trt.BuilderFlag names an engine is built with. int8: the layers without Q/DQ run in fp16
    where the target has it (target.fp16), else in fp32."""
    flags = ("FP16",) if precision == "fp16" or (precision == "int8" and fp16) else ()
    return (*flags, "INT8") if precision == "int8" else flags


def ensure_engine(
    onnx_dir: Path, settings: TensorRTSettings, max_batch: int, target: TargetSpec, workdir: Path
) -> Path:
    identity = engine_identity(onnx_dir, settings, max_batch, target)
    out = workdir / "tensorrt" / artifact_key(identity)
    timing_cache = (
        workdir / "tensorrt" / f"timing-{artifact_key({k: identity[k] for k in ('tensorrt', 'gpu')})}.cache"
    )

    def build(tmp: Path) -> dict[str, Any]:
        flags = builder_flags(settings.precision, target.fp16)
        build_engine_file(onnx_dir / MODEL_FILE, tmp / ENGINE_FILE, flags, max_batch, timing_cache)
        return identity

    return cached_artifact(out, build, f"TensorRT {settings.precision} engine (max batch {max_batch})")


def build_engine_file(
    onnx_file: Path, engine_file: Path, flags: tuple[str, ...], max_batch: int, timing_cache: Path
) -> None:
    """Build an engine with these builder flags (`builder_flags`) and no other precision."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):  # resolves external data next to the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: fp32 matmuls would round to 10 bits
        config.clear_flag(trt.BuilderFlag.TF32)
    if "FP16" in flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if "INT8" in flags and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ nodes carry the scales
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    layout = layout_of([(t.name, list(t.shape)) for t in inputs])
    profile = builder.create_optimization_profile()
    for name, dims in profile_dims(layout, max_batch).items():
        profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(
            f"TensorRT could not build an engine ({'+'.join(flags) or 'fp32'}) from {onnx_file} "
            "(see its log above)"
        )
    engine_file.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt

    dtypes = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
    }
    return dtypes[trt_dtype]


class TensorRTSteps:
    """DecoderSteps over a TensorRT execution context; tensors are torch CUDA buffers."""

    def __init__(self, engine: Any, device: torch.device, max_batch: int) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        self.device = device
        self.max_batch: int | None = max_batch
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shapes = [(n, list(engine.get_tensor_shape(n))) for n in names]
        self.layout: DecoderLayout = layout_of(shapes)
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        # TensorRT wants a non-null address even for an empty (past length 0) tensor
        self._placeholder = torch.empty(256, dtype=torch.uint8, device=device)
        self.stream = torch.cuda.Stream(device)
        self._past: list[torch.Tensor] = []
        self._length = 0

    @classmethod
    def load(cls, engine_file: Path, device: torch.device, max_batch: int) -> TensorRTSteps:
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise TensorRTBuildError(
                f"TensorRT cannot deserialize {engine_file} (built by another version or GPU?)"
            )
        return cls(engine, device, max_batch)

    def _address(self, tensor: torch.Tensor) -> int:
        return int(tensor.data_ptr()) if tensor.numel() else int(self._placeholder.data_ptr())

    def _run(
        self, input_ids: np.ndarray, positions: np.ndarray, past: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        feeds = {
            INPUT_IDS: torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device),
            LOGITS_POSITIONS: torch.from_numpy(positions).to(self.device),
            **dict(zip(self.layout.past_names, past, strict=True)),
        }
        for name, tensor in feeds.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, self._address(tensor))
        outputs = {}
        for name in self.layout.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, self._address(outputs[name]))
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the feeds' copies
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log above)")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return outputs

    def _empty_past(self, batch_size: int) -> list[torch.Tensor]:
        shape = self.layout.empty_past_shape(batch_size)
        return [torch.empty(shape, dtype=self.dtypes[n], device=self.device) for n in self.layout.past_names]

    def start(self, batch_size: int) -> None:
        self._past = self._empty_past(batch_size)
        self._length = 0

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        check_context(self._length, input_ids.shape[1])
        self._length += input_ids.shape[1]
        last = np.array([input_ids.shape[1] - 1], dtype=np.int64)
        outputs = self._run(input_ids, last, self._past)
        self._past = [outputs[name] for name in self.layout.present_names]
        return outputs[NEXT_TOKEN].to(torch.int64).cpu().numpy()

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        check_context(0, input_ids.shape[1])
        positions = np.arange(input_ids.shape[1], dtype=np.int64)
        outputs = self._run(input_ids, positions, self._empty_past(input_ids.shape[0]))
        return outputs[LOGITS].float().cpu().numpy()

    def close(self) -> None:
        self._past = []
        self.context = None
        self.engine = None
        gc.collect()
        torch.cuda.empty_cache()
