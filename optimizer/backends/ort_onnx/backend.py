"""ONNX Runtime backend: our decoder export (optionally quantized or fp16) in an ONNX Runtime
session on the CPU, CUDA or TensorRT execution provider, driven by a greedy loop.

Every step runs through IO binding: the KV cache stays where the provider produced it (device
memory on a GPU) and is fed back as the next step's past; only the next token ids (B int64) come
back to the host. On the CPU the same path runs with host memory, so it is tested there.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from optimizer.backends.artifacts import artifact_key
from optimizer.backends.base import load_check
from optimizer.backends.installed import (
    GPU_EXTRA,
    ONNX_RUNTIME,
    TENSORRT_EXTRA,
    distribution_version,
    tensorrt_version,
)
from optimizer.backends.onnx.export import (
    INPUT_IDS,
    LOGITS,
    LOGITS_POSITIONS,
    MODEL_FILE,
    NEXT_TOKEN,
    exported_decoder,
    layout_of,
)
from optimizer.backends.onnx.kv_decoding import StepEngine
from optimizer.backends.onnx.quantize import dynamic_int8, fp16, static_int8_qdq
from optimizer.backends.onnx.trt_profile import TRT_MAX_TOKENS, check_context, profile_batch, profile_shapes
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.model import ModelSpec
from optimizer.target import GpuInfo, TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# what makes each GPU provider usable: the rules (missing_onnx_runtime) saw the packages installed
PROVIDER_FIXES = {
    "CUDAExecutionProvider": (
        f"onnxruntime-gpu ({GPU_EXTRA}) with the CUDA and cuDNN libraries it was built for, "
        "on a host with an NVIDIA GPU and its driver"
    ),
    "TensorrtExecutionProvider": (
        f"onnxruntime-gpu ({GPU_EXTRA}) and TensorRT ({TENSORRT_EXTRA}), "
        "on a host with an NVIDIA GPU and its driver"
    ),
}


class ProviderUnavailable(RuntimeError):
    """ONNX Runtime cannot run the requested execution provider here: the candidate fails (a search
    goes on; verify reports its build failed), with the provider and what it needs."""

    def __init__(self, provider: str, why: str) -> None:
        needs = PROVIDER_FIXES.get(provider, f"an onnxruntime built with {provider}")
        super().__init__(f"ONNX Runtime could not use {provider} here: {why}; it needs {needs}")
        self.provider = provider
        self.why = why

    def __reduce__(self) -> tuple[type[ProviderUnavailable], tuple[str, str]]:
        # the default passes the message alone: unpickling (a worker's error sent back) would fail
        return (ProviderUnavailable, (self.provider, self.why))


class OrtOnnxBackend:
    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> StepEngine:
        settings = candidate.settings
        assert isinstance(settings, OrtOnnxSettings)
        check_provider_built(PROVIDER_NAMES[settings.provider])  # before minutes of export
        model_dir = onnx_model_for(settings, model, workdir)
        threads = candidate.threads or (0 if target.is_cuda else target.cores)
        device_id = target.gpu.index if target.gpu else 0
        max_batch = profile_batch(candidate.batch_size)
        providers = provider_list(settings, device_id, model_dir, max_batch, workdir, target.gpu)
        session = make_session(model_dir / MODEL_FILE, providers, threads, settings.spinning)
        device = "cpu" if settings.provider == "cpu" else "cuda"
        on_trt = settings.provider == "tensorrt"
        steps = OrtSteps(
            session, device, device_id, max_batch if on_trt else None, TRT_MAX_TOKENS if on_trt else None
        )
        engine = StepEngine(steps)
        load_check(engine)  # a model that loads may still fail to run
        return engine


def check_provider_built(provider: str) -> None:
    """Raise ProviderUnavailable when this onnxruntime was built without `provider`: the CPU
    package installed beside onnxruntime-gpu shadows it, and the session would fail only after the
    export and its variants were built. Built in is not usable: make_session checks that."""
    import onnxruntime as ort

    built = ort.get_available_providers()
    if provider not in built:
        version = distribution_version(*ONNX_RUNTIME)
        raise ProviderUnavailable(
            provider, f"this onnxruntime ({version}) was built without it (it has {built})"
        )


def onnx_model_for(settings: OrtOnnxSettings, model: ModelSpec, workdir: Path) -> Path:
    """The directory of the ONNX model this candidate runs, exported/quantized if not cached."""
    base = exported_decoder(model, workdir)
    if settings.quantization == "int8-dynamic":
        return dynamic_int8(base)
    if settings.quantization == "int8-static":
        return static_int8_qdq(base, model)
    if settings.precision == "fp16" and settings.provider == "cuda":
        return fp16(base)
    return base  # on TensorRT, fp16 is a builder flag on the fp32 model


def provider_list(
    settings: OrtOnnxSettings,
    device_id: int,
    model_dir: Path,
    max_batch: int,
    workdir: Path,
    gpu: GpuInfo | None,
) -> list[Any]:
    """Execution providers with their options, the candidate's own first."""
    cpu = PROVIDER_NAMES["cpu"]
    cuda = (PROVIDER_NAMES["cuda"], {"device_id": device_id})
    if settings.provider == "cpu":
        return [cpu]
    if settings.provider == "cuda":
        return [cuda, cpu]
    return [
        (
            PROVIDER_NAMES["tensorrt"],
            tensorrt_options(settings, device_id, model_dir, max_batch, workdir, gpu),
        ),
        cuda,
    ]


def tensorrt_options(
    settings: OrtOnnxSettings,
    device_id: int,
    model_dir: Path,
    max_batch: int,
    workdir: Path,
    gpu: GpuInfo | None = None,
) -> dict[str, Any]:
    """TensorRT EP options: precision flags, engine and timing caches in the run's cache (keyed
    by `tensorrt_ep_cache`; `gpu`: the one at `device_id`), and explicit profiles (without them
    the EP rebuilds its engine whenever the past grows)."""
    import onnx

    graph = onnx.load(str(model_dir / MODEL_FILE), load_external_data=False).graph
    layout = layout_of(
        [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in graph.input]
    )
    cache = tensorrt_ep_cache(model_dir, workdir, gpu)
    cache.mkdir(parents=True, exist_ok=True)
    shapes = profile_shapes(layout, max_batch)
    return {
        "device_id": device_id,
        "trt_fp16_enable": settings.precision == "fp16",
        "trt_int8_enable": settings.quantization == "int8-static",  # scales come from the QDQ nodes
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def tensorrt_ep_cache(model_dir: Path, workdir: Path, gpu: GpuInfo | None) -> Path:
    """The TensorRT EP's engine and timing cache directory for `model_dir` on `gpu`.

    Keyed by what an engine must match beyond the model: the EP names its files by the compute
    capability and the TensorRT version ORT was built against, not the TensorRT libraries it loads
    nor the GPU model, and fails the session on an engine it cannot deserialize (no rebuild)."""
    identity = {
        "tensorrt": tensorrt_version(),
        "onnxruntime": distribution_version(*ONNX_RUNTIME),
        "gpu": gpu.name if gpu else None,
        "compute_capability": gpu.compute_capability if gpu else None,
    }
    return workdir / "tensorrt-ep" / model_dir.parent.name / model_dir.name / artifact_key(identity)


def make_session(model_file: Path, providers: list[Any], threads: int, spinning: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:  # spinning is ORT's default: the option is set only to turn it off
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    preloaded = ""
    if wanted != "CPUExecutionProvider" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu's providers link CUDA and cuDNN by soname: installed as pip's nvidia-*
        # wheels (as on the lent H200) they are not on the loader's path until preloaded
        try:
            ort.preload_dlls()
        except OSError as exc:  # the session below then fails with ProviderUnavailable and the reason
            log.warning("onnxruntime.preload_dlls: %s", exc)
            preloaded = f"; loading its CUDA libraries failed: {exc}"
    session = ort.InferenceSession(str(model_file), options, providers=providers)
    if session.get_providers()[0] != wanted:
        raise ProviderUnavailable(
            wanted,
            f"the session fell back to {session.get_providers()} "
            f"(this onnxruntime has {ort.get_available_providers()}){preloaded}",
        )
    return session


class OrtSteps:
    """DecoderSteps over an ONNX Runtime session with IO binding."""

    def __init__(
        self, session: Any, device: str, device_id: int, max_batch: int | None, max_tokens: int | None = None
    ) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self.max_batch = max_batch
        self.max_tokens = max_tokens  # TensorRT's profile bound; None: any length
        self._length = 0  # tokens in the cache
        inputs = session.get_inputs()
        self.layout = layout_of([(i.name, i.shape) for i in inputs])
        past_type = next(i.type for i in inputs if i.name == self.layout.past_names[0])
        self.kv_dtype = ORT_DTYPES[past_type]
        self._past: list[Any] = []

    def _empty_past(self, batch_size: int) -> list[Any]:
        import onnxruntime as ort

        empty = np.zeros(self.layout.empty_past_shape(batch_size), dtype=self.kv_dtype)
        return [
            ort.OrtValue.ortvalue_from_numpy(empty, self.device, self.device_id)
            for _ in self.layout.past_names
        ]

    def _run(
        self, input_ids: np.ndarray, positions: np.ndarray, past: list[Any], logits_device: str
    ) -> list[Any]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(input_ids))
        binding.bind_cpu_input(LOGITS_POSITIONS, positions)
        for name, value in zip(self.layout.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(LOGITS, logits_device, self.device_id)
        binding.bind_output(NEXT_TOKEN, "cpu")
        for name in self.layout.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def start(self, batch_size: int) -> None:
        self._past = self._empty_past(batch_size)
        self._length = 0

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        if self.max_tokens is not None:
            check_context(self._length, input_ids.shape[1], self.max_tokens)
        self._length += input_ids.shape[1]
        last = np.array([input_ids.shape[1] - 1], dtype=np.int64)
        outputs = self._run(input_ids, last, self._past, self.device)
        self._past = outputs[2:]
        return np.asarray(outputs[1].numpy(), dtype=np.int64)

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        if self.max_tokens is not None:
            check_context(0, input_ids.shape[1], self.max_tokens)
        positions = np.arange(input_ids.shape[1], dtype=np.int64)
        outputs = self._run(input_ids, positions, self._empty_past(input_ids.shape[0]), "cpu")
        return np.asarray(outputs[0].numpy(), dtype=np.float32)

    def close(self) -> None:
        self._past = []
        self.session = None
        gc.collect()
