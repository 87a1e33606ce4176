"""Dataclass schemas for every conf/ group, registered in Hydra's ConfigStore.

Config classes are data: they validate themselves (raising `UserError`, a ValueError that names
the field and the fix) and never touch the environment, the network or CUDA.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.errors import UserError

CONF_DIR = Path(__file__).parent / "conf"


def _require(ok: bool, field_name: str, problem: str, fix: str) -> None:
    if not ok:
        raise UserError(field_name, problem, fix)


def _require_subset(values: Sequence[object], allowed: Sequence[object], field_name: str) -> None:
    bad = [v for v in values if v not in allowed]
    _require(
        not bad,
        field_name,
        f"unknown value(s) {bad}",
        f"use values from {list(allowed)}",
    )
    _require(len(values) > 0, field_name, "is empty", f"give at least one of {list(allowed)}")


@dataclass
class ModelConfig:
    """Which model to optimize.

    `source` is the packaged alias `smollm2`, a local Hugging Face directory, a `.gguf` file, or
    a hub id (used only when the hub is reachable or the id is in the local HF cache).
    """

    source: str = "smollm2"
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.source.strip()), "model.source", "is empty", "pass model=<dir|file.gguf|smollm2>")


TARGET_KINDS = ("auto", "cpu", "cuda")
ENERGY_SOURCES = ("auto", "nvml", "rapl", "estimate")


@dataclass
class TargetConfig:
    """The deployment target. `None` capability fields are detected on the machine.

    A preset for a GPU model fills the capabilities the optimizer cannot read from NVML
    (bandwidth, peak FLOP/s, fp8 support). `memory_gib` is a budget: it lets a big device stand
    in for a smaller one.
    """

    kind: str = "auto"
    name: str = "auto"
    device_index: int = 0
    memory_gib: float | None = None
    bf16: bool | None = None
    fp16: bool | None = None
    fp8: bool | None = None
    tdp_watts: float | None = None
    memory_bandwidth_gb_per_s: float | None = None
    peak_bf16_tflops: float | None = None
    energy_source: str = "auto"
    # Used only by the labelled CPU energy *estimate* (no RAPL): active watts per busy core
    # (process CPU seconds x this) plus static watts per core over wall time.
    cpu_active_watts_per_core: float = 5.0
    cpu_idle_watts_per_core: float = 1.5

    def __post_init__(self) -> None:
        _require_subset([self.kind], TARGET_KINDS, "target.kind")
        _require_subset([self.energy_source], ENERGY_SOURCES, "target.energy_source")
        _require(self.device_index >= 0, "target.device_index", "is negative", "use 0 for the first GPU")
        if self.memory_gib is not None:
            _require(self.memory_gib > 0, "target.memory_gib", "must be > 0", "e.g. target.memory_gib=24")
        _require(
            self.cpu_active_watts_per_core > 0 and self.cpu_idle_watts_per_core >= 0,
            "target.cpu_active_watts_per_core",
            "estimate watts must be positive",
            "use the CPU's TDP divided by its cores",
        )


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
    "paged",  # the continuous-batching engine's own block cache (loop: continuous)
)
# sdpa_gqa: SDPA whose single-token decode queries are packed per KV head, so grouped-query K/V
# are never repeated in memory, also under torch.compile (transformers repeats them there)
TORCH_ATTENTION = ("sdpa", "sdpa_gqa", "eager", "flash_attention_2")
# hf: transformers' generate loop; graph: our greedy loop whose decode step (forward + argmax on
# the device) is one captured CUDA graph, replayed without host synchronization; continuous:
# transformers' continuous-batching engine (paged KV, requests join and leave between steps).
TORCH_LOOPS = ("hf", "graph", "continuous")
BACKENDS = ("torch", "ort-genai", "ort-onnx", "tensorrt")

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


@dataclass
class TorchAxes:
    """Axes searched for the PyTorch backend (HF generate)."""

    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    quantizations: list[str] = field(default_factory=lambda: ["none", "int8-dynamic"])
    kv_caches: list[str] = field(default_factory=lambda: ["dynamic"])
    compile: list[bool] = field(default_factory=lambda: [False])
    attention: list[str] = field(default_factory=lambda: ["sdpa"])
    loops: list[str] = field(default_factory=lambda: ["hf"])

    def __post_init__(self) -> None:
        _require_subset(self.precisions, TORCH_PRECISIONS, "space.torch.precisions")
        _require_subset(self.quantizations, TORCH_QUANTIZATIONS, "space.torch.quantizations")
        _require_subset(self.kv_caches, TORCH_KV_CACHES, "space.torch.kv_caches")
        _require_subset(self.compile, (True, False), "space.torch.compile")
        _require_subset(self.attention, TORCH_ATTENTION, "space.torch.attention")
        _require_subset(self.loops, TORCH_LOOPS, "space.torch.loops")


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

    def __post_init__(self) -> None:
        _require_subset(self.providers, GENAI_PROVIDERS, "space.ort_genai.providers")
        _require_subset(self.precisions, GENAI_PRECISIONS, "space.ort_genai.precisions")
        _require_subset(self.algorithms, GENAI_ALGORITHMS, "space.ort_genai.algorithms")
        _require_subset(self.block_sizes, GENAI_BLOCK_SIZES, "space.ort_genai.block_sizes")
        _require_subset(self.accuracy_levels, GENAI_ACCURACY_LEVELS, "space.ort_genai.accuracy_levels")
        _require_subset(self.int8_lm_head, (True, False), "space.ort_genai.int8_lm_head")


@dataclass
class OrtOnnxAxes:
    """Axes searched for the exported ONNX decoder run by ONNX Runtime sessions."""

    providers: list[str] = field(default_factory=lambda: ["cpu"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    quantizations: list[str] = field(default_factory=lambda: ["none", "int8-dynamic"])

    def __post_init__(self) -> None:
        _require_subset(self.providers, ONNX_PROVIDERS, "space.ort_onnx.providers")
        _require_subset(self.precisions, ONNX_PRECISIONS, "space.ort_onnx.precisions")
        _require_subset(self.quantizations, ONNX_QUANTIZATIONS, "space.ort_onnx.quantizations")


@dataclass
class TensorRTAxes:
    """Axes searched for native TensorRT engines built from the exported ONNX decoder."""

    precisions: list[str] = field(default_factory=lambda: ["fp16"])

    def __post_init__(self) -> None:
        _require_subset(self.precisions, TENSORRT_PRECISIONS, "space.tensorrt.precisions")


@dataclass
class BaselineConfig:
    """The careless default that gains are reported against (HF eager, batch 1)."""

    precision: str = "fp32"
    quantization: str = "none"
    kv_cache: str = "dynamic"
    batch_size: int = 1

    def __post_init__(self) -> None:
        _require_subset([self.precision], TORCH_PRECISIONS, "space.baseline.precision")
        _require_subset([self.quantization], TORCH_QUANTIZATIONS, "space.baseline.quantization")
        _require_subset([self.kv_cache], TORCH_KV_CACHES, "space.baseline.kv_cache")
        _require(self.batch_size >= 1, "space.baseline.batch_size", "must be >= 1", "use 1")


@dataclass
class SpaceConfig:
    """The deployment settings to search. `threads: [0]` means all cores of the target."""

    backends: list[str] = field(default_factory=lambda: ["torch"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    threads: list[int] = field(default_factory=lambda: [0])
    torch: TorchAxes = field(default_factory=TorchAxes)
    ort_genai: OrtGenaiAxes = field(default_factory=OrtGenaiAxes)
    ort_onnx: OrtOnnxAxes = field(default_factory=OrtOnnxAxes)
    tensorrt: TensorRTAxes = field(default_factory=TensorRTAxes)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # Exact candidates measured besides the grid, e.g. a reference deployment to compare with:
    # {backend: torch, batch_size: 512, threads: 0, precision: bf16, kv_cache: static, compile: true}
    extra: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require_subset(self.backends, BACKENDS, "space.backends")
        _require(
            bool(self.batch_sizes) and all(b >= 1 for b in self.batch_sizes),
            "space.batch_sizes",
            f"must be a non-empty list of sizes >= 1, got {self.batch_sizes}",
            "e.g. space.batch_sizes=[1,8,32]",
        )
        _require(
            bool(self.threads) and all(t >= 0 for t in self.threads),
            "space.threads",
            f"must be a non-empty list of counts >= 0 (0 = all cores), got {self.threads}",
            "e.g. space.threads=[1,2] or [0]",
        )


SAMPLERS = ("grid", "random", "optuna")
OPTUNA_ALGORITHMS = ("tpe", "nsga2")


@dataclass
class OptunaConfig:
    """Optuna samplers (search.sampler=optuna).

    `tpe`: one objective, goodput tokens/J up. `nsga2`: two, goodput tokens/J up and quality loss
    (mean KL) down. Both get the quality bound and the SLO as constraints.
    """

    algorithm: str = "tpe"
    startup_trials: int = 4  # trials before TPE's model steers (warm-start ones, then random)
    # Start from the candidate with the highest roofline bound of each numerics (up to
    # startup_trials): each quality probe early, the analytically most promising first.
    warm_start: bool = True
    population_size: int = 8  # NSGA-II: trials per generation
    # proposals per suggestion before the sampler takes the nearest unevaluated valid candidate
    # (on a small space the model keeps proposing points it has already seen)
    max_proposals: int = 16

    def __post_init__(self) -> None:
        _require_subset([self.algorithm], OPTUNA_ALGORITHMS, "search.optuna.algorithm")
        _require(self.startup_trials >= 1, "search.optuna.startup_trials", "must be >= 1", "e.g. 4")
        _require(self.population_size >= 2, "search.optuna.population_size", "must be >= 2", "e.g. 8")
        _require(self.max_proposals >= 1, "search.optuna.max_proposals", "must be >= 1", "e.g. 16")


@dataclass
class SearchConfig:
    """How candidates are drawn, how much measuring time the search may spend, and by how many
    workers (each with a whole device while it measures)."""

    sampler: str = "grid"
    budget_minutes: float = 20.0
    max_candidates: int | None = None  # new evaluations in this run, all workers together;
    # a rejection by quality already known (a batch variant of rejected numerics) costs nothing
    seed: int = 0
    retry_failed: bool = False
    candidate_timeout_minutes: float = 15.0
    workers: int = 1
    # A worker holds a lease on the candidate it evaluates, renewed while it lives; a killed
    # worker's lease lapses after this long (at once when it ran on the same host).
    lease_seconds: float = 120.0
    # Drop candidates whose analytic tokens/J upper bound is below the best measured so far.
    roofline: bool = True
    # CPU targets without preset rates: measured copy bandwidth and matmul rate times this factor
    # stand in for the peaks (an assumption, printed in the report).
    roofline_headroom: float = 2.0
    optuna: OptunaConfig = field(default_factory=OptunaConfig)

    def __post_init__(self) -> None:
        _require_subset([self.sampler], SAMPLERS, "search.sampler")
        _require(
            self.candidate_timeout_minutes > 0, "search.candidate_timeout_minutes", "must be > 0", "e.g. 15"
        )
        _require(self.budget_minutes > 0, "search.budget_minutes", "must be > 0", "e.g. 20")
        if self.max_candidates is not None:
            _require(self.max_candidates >= 1, "search.max_candidates", "must be >= 1", "or null")
        _require(self.workers >= 1, "search.workers", "must be >= 1", "one worker per device, e.g. 1")
        _require(self.lease_seconds >= 10, "search.lease_seconds", "must be >= 10", "e.g. 120")
        _require(
            self.roofline_headroom >= 1,
            "search.roofline_headroom",
            f"is {self.roofline_headroom} < 1: the bound would no longer be an upper bound",
            "use >= 1, e.g. 2",
        )


LAUNCHERS = ("local", "ray", "slurm")
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


@dataclass
class RayConfig:
    """Ray: `address` null starts a Ray instance on this machine (loopback only); `auto` or
    `ray://host:10001` joins a running cluster. Each worker is a task with one GPU on GPU targets."""

    address: str | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        _require(self.cpus_per_worker > 0, "launcher.ray.cpus_per_worker", "must be > 0", "e.g. 1")


@dataclass
class SlurmConfig:
    """SLURM through submitit: one array job, one task per worker, each with its own GPU(s).

    `cluster: local` runs the same submitit jobs as processes on this machine (no sbatch), and
    `dry_run` writes the sbatch file that would be submitted without submitting it.
    """

    folder: str = "outputs/slurm"
    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    timeout_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    setup: list[str] = field(default_factory=list)
    dry_run: bool = False

    def __post_init__(self) -> None:
        _require_subset([self.cluster], SUBMITIT_CLUSTERS, "launcher.slurm.cluster")
        _require(self.timeout_min >= 1, "launcher.slurm.timeout_min", "must be >= 1", "e.g. 240")
        _require(self.gpus_per_node >= 0, "launcher.slurm.gpus_per_node", "must be >= 0", "e.g. 1")
        _require(self.cpus_per_task >= 1, "launcher.slurm.cpus_per_task", "must be >= 1", "e.g. 8")


@dataclass
class LauncherConfig:
    """Where `search.workers` run: processes on this machine, Ray tasks, or SLURM jobs. All of them
    meet at the TrialStore (`store_path`), which must be PostgreSQL when workers span nodes."""

    kind: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        _require_subset([self.kind], LAUNCHERS, "launcher.kind")


@dataclass
class SloConfig:
    """Latency SLO per request, checked at `percentile` over all requests. null disables one."""

    percentile: float = 90.0
    ttft_ms: float | None = None
    tpot_ms: float | None = 250.0

    def __post_init__(self) -> None:
        _require(0 < self.percentile <= 100, "workload.slo.percentile", "must be in (0, 100]", "e.g. 90")
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            _require(
                value is None or value > 0,
                f"workload.slo.{name}",
                f"must be > 0 or null, got {value}",
                "give a latency in milliseconds",
            )


@dataclass
class WorkloadConfig:
    """Requests and the energy-window protocol used to measure every candidate."""

    prompt_tokens: int = 64
    max_new_tokens: int = 32
    min_window_seconds: float = 5.0
    repeats: int = 3
    warmup_batches: int = 1
    idle_seconds: float = 5.0
    slo: SloConfig = field(default_factory=SloConfig)

    def __post_init__(self) -> None:
        _require(self.prompt_tokens >= 1, "workload.prompt_tokens", "must be >= 1", "e.g. 64")
        _require(self.max_new_tokens >= 2, "workload.max_new_tokens", "must be >= 2", "e.g. 32")
        _require(self.min_window_seconds > 0, "workload.min_window_seconds", "must be > 0", "e.g. 5")
        _require(self.repeats >= 1, "workload.repeats", "must be >= 1", "use >= 3 for a spread")
        _require(self.warmup_batches >= 0, "workload.warmup_batches", "must be >= 0", "e.g. 1")
        _require(self.idle_seconds >= 0, "workload.idle_seconds", "must be >= 0", "e.g. 5")


@dataclass
class QualityConfig:
    """Quality bound relative to the fp32 eager reference on held-out text.

    `text` is `wiki` (the packaged Wikipedia lead paragraphs) or a path to a `.txt` (paragraphs
    separated by blank lines), `.json` or `.jsonl` file. Workload prompts come from the same text;
    every fifth paragraph is held out for quality.
    """

    text: str = "wiki"
    num_sequences: int = 16
    seq_tokens: int = 128
    max_ppl_increase: float = 0.03
    min_top1_agreement: float = 0.95
    max_kl: float = 0.05
    batch_size: int = 4

    def __post_init__(self) -> None:
        _require(self.num_sequences >= 1, "quality.num_sequences", "must be >= 1", "e.g. 16")
        _require(self.seq_tokens >= 8, "quality.seq_tokens", "must be >= 8", "e.g. 128")
        _require(self.batch_size >= 1, "quality.batch_size", "must be >= 1", "e.g. 4")
        _require(
            self.max_ppl_increase >= 0,
            "quality.max_ppl_increase",
            f"is {self.max_ppl_increase}: no candidate can beat the reference by construction",
            "use a relative increase >= 0, e.g. 0.03 for 3%",
        )
        _require(
            0 <= self.min_top1_agreement <= 1,
            "quality.min_top1_agreement",
            f"is {self.min_top1_agreement}, outside [0, 1]",
            "use a fraction, e.g. 0.95",
        )
        _require(
            self.max_kl >= 0, "quality.max_kl", f"is {self.max_kl} < 0", "use a KL in nats >= 0, e.g. 0.05"
        )


@dataclass
class AccountingConfig:
    """Facility roll-up assumptions, printed next to every derived figure."""

    pue: float = 1.2
    grid_gco2_per_kwh: float = 400.0
    price_per_kwh: float = 0.15
    currency: str = "USD"

    def __post_init__(self) -> None:
        _require(self.pue >= 1.0, "accounting.pue", f"is {self.pue} < 1", "a PUE is >= 1, e.g. 1.2")
        _require(self.grid_gco2_per_kwh >= 0, "accounting.grid_gco2_per_kwh", "is negative", "e.g. 400")
        _require(self.price_per_kwh >= 0, "accounting.price_per_kwh", "is negative", "e.g. 0.15")


@dataclass
class RunConfig:
    """One `optimize` run. `store_path` outlives runs so that a re-run resumes; every worker of a
    search reads and writes it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    output_dir: str = "outputs/run"
    # An SQLite file (default) or a database URL: sqlite:///path or postgresql://user@host/db.
    store_path: str = "outputs/trials.db"
    cache_dir: str = "~/.cache/wattsmith"

    def __post_init__(self) -> None:
        for name in ("output_dir", "store_path", "cache_dir"):
            _require(bool(str(getattr(self, name)).strip()), name, "is empty", f"give a path for {name}")


def register_configs() -> None:
    """Store the schema so that every conf/ group is validated against it while composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def group_options(group: str) -> list[str]:
    """Names of the presets in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def expand_model_shorthand(overrides: Sequence[str]) -> list[str]:
    """`model=/some/dir` (not a preset name) means `model.source=/some/dir`."""
    presets = set(group_options("model"))
    expanded = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key == "model" and value not in presets:
            expanded.append(f"model.source={value}")
        else:
            expanded.append(item)
    return expanded


def compose_run_config(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose conf/ with Hydra overrides into a validated RunConfig.

    Every composition or validation problem is raised as a UserError naming the field.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    _check_override_syntax(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            composed = compose("config", overrides=expand_model_shorthand(overrides))
        run = OmegaConf.to_object(composed)
    except UserError:
        raise
    except HydraException as exc:
        raise _hydra_error(exc) from None
    except ValueError as exc:  # Hydra raises some override errors outside HydraException
        raise UserError(
            "overrides", _first_line(exc), "overrides look like group=preset or a.b=value"
        ) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "overrides"
        raise UserError(str(key), _first_line(exc), "check the value's type and spelling") from None
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(run, RunConfig)
    return run


def _check_override_syntax(overrides: Sequence[str]) -> None:
    """Parse each override alone, so that a syntax error names the key it was setting."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_overrides([item])
        except (HydraException, ValueError) as exc:
            key = item.partition("=")[0].lstrip("+~") or "overrides"
            raise UserError(
                key, f"cannot parse '{item}': {_first_line(exc)}", "check brackets and quotes"
            ) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _hydra_error(exc: Exception) -> UserError:
    causes = []
    current: BaseException | None = exc
    while current is not None:
        causes.append(str(current).strip())
        current = current.__cause__
    text = " ".join(c for c in causes if c)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        return UserError(group, f"no preset named '{name}'", f"use one of {group_options(group)}")
    override = re.search(r"Could not (?:override|append to) '([^']+)'", text)
    if override and "not in" in text:
        return UserError(
            override.group(1),
            "is not a setting",
            "check the spelling; `optimize --show-config` prints every setting",
        )
    key = re.search(r"full_key: (\S+)", text) or override
    converted = re.search(r"(Value '.*' of type '\w+' could not be converted to \w+)", text)
    return UserError(
        key.group(1) if key else "overrides",
        converted.group(1) if converted else " ".join(text.split())[:300],
        "overrides look like group=preset or a.b=value; `optimize --help` lists the groups",
    )
