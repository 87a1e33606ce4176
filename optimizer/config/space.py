"""Schema of conf/space/: the deployment settings searched, axis by axis and backend by backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optimizer.config.checks import require, require_finite, require_subset

TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
# fp8: torchao, activations scaled per row at run time; fp8-static: activation scales calibrated
# once on the workload text (one multiply in the kernel before it, no amax reduction per step)
TORCH_QUANTIZATIONS = ("none", "int8-dynamic", "int8-weight", "int4-weight", "fp8", "fp8-static")
TORCH_KV_CACHES = (
    "dynamic",
    "static",
    "offloaded",
    "offloaded_static",
    "quanto-2",
    "quanto-4",
    "hqq-2",
    "hqq-4",
    "hqq-8",
)
# sdpa_gqa: SDPA whose single-token decode queries are packed per KV head, so grouped-query K/V
# are never repeated in memory, also under torch.compile (transformers repeats them there)
TORCH_ATTENTION = ("sdpa", "sdpa_gqa", "eager", "flash_attention_2", "flash_attention_3")
# hf: transformers' generate loop; graph: our greedy loop whose decode step (forward + argmax on
# the device) is one captured CUDA graph, replayed without host synchronization; slots: that step
# over per-request slots that requests join and leave between steps (continuous admission).
TORCH_LOOPS = ("hf", "graph", "slots")
# torch-cb: transformers' continuous batching (paged KV; requests join and leave between steps)
BACKENDS = ("torch", "torch-cb", "ort-genai", "ort-onnx", "tensorrt", "llamacpp")
CB_PRECISIONS = TORCH_PRECISIONS
CB_QUANTIZATIONS = ("none", "int8-weight", "int4-weight", "fp8", "fp8-static")
CB_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")
CB_PAGE_SIZES = (16, 32, 64, 128, 256)

# onnxruntime-genai model builder options (read from its source: its --help crashes).
GENAI_PROVIDERS = ("cpu", "cuda")
GENAI_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
GENAI_ALGORITHMS = ("default", "rtn", "k_quant")  # weight-only (MatMulNBits) quantization method
GENAI_BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits compute: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (the builder's CPU default)
GENAI_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# ONNX export + ONNX Runtime sessions
ONNX_PROVIDERS = ("cpu", "cuda", "tensorrt")
ONNX_PRECISIONS = ("fp32", "fp16")
# int8-static: QDQ calibrated on the packaged Wikipedia text (workload split, never the quality split)
ONNX_QUANTIZATIONS = ("none", "int8-dynamic", "int8-static")
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
# llama.cpp (llama-cpp-python): "gguf" runs the model's GGUF as it is; the others are made from it by
# llama.cpp's own quantizer (llama_model_quantize), named as llama-quantize names them. A type
# that the installed library lacks is excluded by a rule naming it.
LLAMACPP_WEIGHT_TYPES = (
    "gguf",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "IQ4_NL",
    "IQ4_XS",
    "Q3_K_M",
    "Q2_K",
)
LLAMACPP_KV_TYPES = ("f16", "q8_0", "q4_0")  # K and V cache element type


@dataclass
class TorchAxes:
    """Axes searched for the PyTorch backend (HF generate)."""

    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    quantizations: list[str] = field(default_factory=lambda: ["none", "int8-dynamic"])
    kv_caches: list[str] = field(default_factory=lambda: ["dynamic"])
    compile: list[bool] = field(default_factory=lambda: [False])
    attention: list[str] = field(default_factory=lambda: ["sdpa"])
    loops: list[str] = field(default_factory=lambda: ["hf"])
    # loop=slots only: the least ms from one decode step's start to the next (0: back to back)
    step_intervals_ms: list[float] = field(default_factory=lambda: [0.0])
    # loop=slots only: keep finished requests' K/V and reuse a shared prompt prefix (serving)
    prefix_sharing: list[bool] = field(default_factory=lambda: [False])
    # with compile, loop=graph or slots: one compiled decoder layer serves every layer
    compile_layers: list[bool] = field(default_factory=lambda: [False])

    def __post_init__(self) -> None:
        # `inf` passes `>= 0`: the slots loop's wait for the next step would overflow
        require_finite(self, "space.torch")
        require(
            bool(self.step_intervals_ms) and all(v >= 0 for v in self.step_intervals_ms),
            "space.torch.step_intervals_ms",
            f"must be a non-empty list of milliseconds >= 0, got {self.step_intervals_ms}",
            "e.g. space.torch.step_intervals_ms=[0,20]",
        )
        require_subset(self.precisions, TORCH_PRECISIONS, "space.torch.precisions")
        require_subset(self.quantizations, TORCH_QUANTIZATIONS, "space.torch.quantizations")
        require_subset(self.kv_caches, TORCH_KV_CACHES, "space.torch.kv_caches")
        require_subset(self.compile, (True, False), "space.torch.compile")
        require_subset(self.attention, TORCH_ATTENTION, "space.torch.attention")
        require_subset(self.loops, TORCH_LOOPS, "space.torch.loops")
        require_subset(self.prefix_sharing, (True, False), "space.torch.prefix_sharing")
        require_subset(self.compile_layers, (True, False), "space.torch.compile_layers")


@dataclass
class TorchCbAxes:
    """Axes searched for transformers' continuous-batching engine (backend torch-cb). The
    candidate's batch size is the most sequences it decodes at once."""

    precisions: list[str] = field(default_factory=lambda: ["bf16"])
    quantizations: list[str] = field(default_factory=lambda: ["none"])
    attention: list[str] = field(default_factory=lambda: ["sdpa"])
    compile: list[bool] = field(default_factory=lambda: [False])
    # tokens per forward: a longer prefill is split into chunks of this many
    max_batch_tokens: list[int] = field(default_factory=lambda: [256])
    # the paged cache's size in tokens (the KV memory budget); 0: room for every sequence of the
    # batch at the workload's longest request, no more
    kv_cache_tokens: list[int] = field(default_factory=lambda: [0])
    prefix_sharing: list[bool] = field(default_factory=lambda: [False])
    page_sizes: list[int] = field(default_factory=lambda: [64])
    # host memory (GiB) that evicted requests' KV moves to instead of being recomputed; 0: off
    kv_offload_gib: list[float] = field(default_factory=lambda: [0.0])

    def __post_init__(self) -> None:
        require_subset(self.precisions, CB_PRECISIONS, "space.torch_cb.precisions")
        require_subset(self.quantizations, CB_QUANTIZATIONS, "space.torch_cb.quantizations")
        require_subset(self.attention, CB_ATTENTION, "space.torch_cb.attention")
        require_subset(self.compile, (True, False), "space.torch_cb.compile")
        require_subset(self.prefix_sharing, (True, False), "space.torch_cb.prefix_sharing")
        require_subset(self.page_sizes, CB_PAGE_SIZES, "space.torch_cb.page_sizes")
        # `inf` passes `>= 0`: transformers converts the offload GiB to a whole number of bytes
        require_finite(self, "space.torch_cb")
        for name, low in (("max_batch_tokens", 16), ("kv_cache_tokens", 0), ("kv_offload_gib", 0)):
            values = getattr(self, name)
            require(
                bool(values) and all(v >= low for v in values),
                f"space.torch_cb.{name}",
                f"must be a non-empty list of values >= {low}, got {values}",
                "see the comment in conf/space/cpu-default.yaml",
            )


@dataclass
class OrtGenaiAxes:
    """Axes searched for onnxruntime-genai builds. The weight-quantization axes (algorithms,
    block sizes, accuracy levels, int8 lm_head) apply to int4/int8 builds only."""

    providers: list[str] = field(default_factory=lambda: ["cpu"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8", "int4"])
    algorithms: list[str] = field(default_factory=lambda: ["default"])
    block_sizes: list[int] = field(default_factory=lambda: [32])
    accuracy_levels: list[int] = field(default_factory=lambda: [4])
    int8_lm_head: list[bool] = field(default_factory=lambda: [False])
    # the decoder session's intra-op threads busy-wait (ORT's default) or sleep: one build serves both
    spinning: list[bool] = field(default_factory=lambda: [True])

    def __post_init__(self) -> None:
        require_subset(self.providers, GENAI_PROVIDERS, "space.ort_genai.providers")
        require_subset(self.precisions, GENAI_PRECISIONS, "space.ort_genai.precisions")
        require_subset(self.algorithms, GENAI_ALGORITHMS, "space.ort_genai.algorithms")
        require_subset(self.block_sizes, GENAI_BLOCK_SIZES, "space.ort_genai.block_sizes")
        require_subset(self.accuracy_levels, GENAI_ACCURACY_LEVELS, "space.ort_genai.accuracy_levels")
        require_subset(self.int8_lm_head, (True, False), "space.ort_genai.int8_lm_head")
        require_subset(self.spinning, (True, False), "space.ort_genai.spinning")


@dataclass
class OrtOnnxAxes:
    """Axes searched for the exported ONNX decoder run by ONNX Runtime sessions."""

    providers: list[str] = field(default_factory=lambda: ["cpu"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    quantizations: list[str] = field(default_factory=lambda: ["none", "int8-dynamic"])
    # intra-op threads busy-wait between operators (ORT's default) or sleep: latency vs CPU time
    spinning: list[bool] = field(default_factory=lambda: [True])

    def __post_init__(self) -> None:
        require_subset(self.providers, ONNX_PROVIDERS, "space.ort_onnx.providers")
        require_subset(self.precisions, ONNX_PRECISIONS, "space.ort_onnx.precisions")
        require_subset(self.quantizations, ONNX_QUANTIZATIONS, "space.ort_onnx.quantizations")
        require_subset(self.spinning, (True, False), "space.ort_onnx.spinning")


@dataclass
class TensorRTAxes:
    """Axes searched for native TensorRT engines built from the exported ONNX decoder."""

    precisions: list[str] = field(default_factory=lambda: ["fp16"])

    def __post_init__(self) -> None:
        require_subset(self.precisions, TENSORRT_PRECISIONS, "space.tensorrt.precisions")


@dataclass
class LlamaCppAxes:
    """Axes searched for llama.cpp (backend llamacpp). The candidate's batch size is the number of
    sequences decoded at once (one sequence id per request), its threads llama.cpp's threads."""

    weight_types: list[str] = field(default_factory=lambda: ["gguf"])
    kv_types: list[str] = field(default_factory=lambda: ["f16"])
    flash_attention: list[bool] = field(default_factory=lambda: [True])
    # tokens per llama_decode call (a longer prefill is split) and per compute micro-batch
    n_batch: list[int] = field(default_factory=lambda: [512])
    n_ubatch: list[int] = field(default_factory=lambda: [512])
    # keep finished requests' cells per sequence id and reuse a shared prompt prefix (serving only)
    prefix_sharing: list[bool] = field(default_factory=lambda: [False])

    def __post_init__(self) -> None:
        require_subset(self.weight_types, LLAMACPP_WEIGHT_TYPES, "space.llamacpp.weight_types")
        require_subset(self.kv_types, LLAMACPP_KV_TYPES, "space.llamacpp.kv_types")
        require_subset(self.flash_attention, (True, False), "space.llamacpp.flash_attention")
        require_subset(self.prefix_sharing, (True, False), "space.llamacpp.prefix_sharing")
        for name in ("n_batch", "n_ubatch"):
            values = getattr(self, name)
            require(
                bool(values) and all(v >= 1 for v in values),
                f"space.llamacpp.{name}",
                f"must be a non-empty list of token counts >= 1, got {values}",
                "e.g. [512]",
            )


@dataclass
class BaselineConfig:
    """The careless default that gains are reported against (HF eager, batch 1). `precision: auto`
    is the checkpoint's own (its config's dtype, as transformers 5 loads it unless told otherwise;
    fp32 where it names none). The precision becomes the reference's when `quality.reference` is
    bf16 or fp16; with a GGUF reference the baseline is the GGUF as shipped in llama.cpp, at this
    batch size."""

    precision: str = "auto"
    quantization: str = "none"
    kv_cache: str = "dynamic"
    batch_size: int = 1

    def __post_init__(self) -> None:
        require_subset([self.precision], ("auto", *TORCH_PRECISIONS), "space.baseline.precision")
        require_subset([self.quantization], TORCH_QUANTIZATIONS, "space.baseline.quantization")
        require_subset([self.kv_cache], TORCH_KV_CACHES, "space.baseline.kv_cache")
        require(self.batch_size >= 1, "space.baseline.batch_size", "must be >= 1", "use 1")


@dataclass
class SpaceConfig:
    """The deployment settings to search. `threads: [0]` means all cores of the target."""

    backends: list[str] = field(default_factory=lambda: ["torch"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    threads: list[int] = field(default_factory=lambda: [0])
    # Layout: independent engine processes (the batch split between them) and tensor-parallel
    # ranks per process group; threads are per process. [1] and [1]: one process.
    replicas: list[int] = field(default_factory=lambda: [1])
    tensor_parallel: list[int] = field(default_factory=lambda: [1])
    torch: TorchAxes = field(default_factory=TorchAxes)
    torch_cb: TorchCbAxes = field(default_factory=TorchCbAxes)
    ort_genai: OrtGenaiAxes = field(default_factory=OrtGenaiAxes)
    ort_onnx: OrtOnnxAxes = field(default_factory=OrtOnnxAxes)
    tensorrt: TensorRTAxes = field(default_factory=TensorRTAxes)
    llamacpp: LlamaCppAxes = field(default_factory=LlamaCppAxes)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # Exact candidates measured besides the grid, e.g. a reference deployment to compare with:
    # {backend: torch, batch_size: 512, threads: 0, precision: bf16, kv_cache: static, compile: true}
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_subset(self.backends, BACKENDS, "space.backends")
        require(
            bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
            "space.batch_sizes",
            f"must be a non-empty list of sizes >= 1, got {self.batch_sizes}",
            "e.g. space.batch_sizes=[1,8,32]",
        )
        require(
            bool(self.threads) and all(t >= 0 for t in self.threads),
            "space.threads",
            f"must be a non-empty list of counts >= 0 (0 = all cores), got {self.threads}",
            "e.g. space.threads=[1,2] or [0]",
        )
        for name in ("replicas", "tensor_parallel"):
            values = getattr(self, name)
            require(
                bool(values) and all(type(v) is int and v >= 1 for v in values),
                f"space.{name}",
                f"must be a non-empty list of integers >= 1, got {values}",
                f"e.g. space.{name}=[1,2]",
            )
