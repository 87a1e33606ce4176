"""Dataclass schemas for every conf/ group, and their composition with Hydra.

Config classes are data: they validate themselves (raising `UserError`, a ValueError that names
the field and the fix) and never touch the environment, the network or CUDA. One module per
conf/ group holds its schemas (`model`, `target`, `space`, `search`, `launcher`, `workload`,
`quality`, `accounting`; `run` the root); `presets` says where presets come from (the packaged
conf/ and a user's config directory) and `compose` turns them into a RunConfig. Hydra is
imported only while composing, so importing this package stays light.
"""

from __future__ import annotations

from optimizer.config.accounting import AccountingConfig
from optimizer.config.compose import compose_run_config, register_configs
from optimizer.config.launcher import (
    LAUNCHERS,
    SUBMITIT_CLUSTERS,
    LauncherConfig,
    RayConfig,
    SlurmConfig,
)
from optimizer.config.model import ModelConfig
from optimizer.config.presets import (
    CONF_DIR,
    CONFIG_DIR_ENV,
    GROUPS,
    Preset,
    check_config_dir,
    config_dir_from,
    expand_model_shorthand,
    group_options,
    presets,
)
from optimizer.config.quality import HALF_REFERENCES, QUALITY_REFERENCES, QualityConfig
from optimizer.config.run import CACHE_ENV, RunConfig, cache_dir_from
from optimizer.config.search import OPTUNA_ALGORITHMS, SAMPLERS, OptunaConfig, SearchConfig
from optimizer.config.space import (
    BACKENDS,
    CB_ATTENTION,
    CB_PAGE_SIZES,
    CB_PRECISIONS,
    CB_QUANTIZATIONS,
    GENAI_ACCURACY_LEVELS,
    GENAI_ALGORITHMS,
    GENAI_BLOCK_SIZES,
    GENAI_PRECISIONS,
    GENAI_PROVIDERS,
    LLAMACPP_KV_TYPES,
    LLAMACPP_WEIGHT_TYPES,
    ONNX_PRECISIONS,
    ONNX_PROVIDERS,
    ONNX_QUANTIZATIONS,
    TENSORRT_PRECISIONS,
    TORCH_ATTENTION,
    TORCH_KV_CACHES,
    TORCH_LOOPS,
    TORCH_PRECISIONS,
    TORCH_QUANTIZATIONS,
    BaselineConfig,
    LlamaCppAxes,
    OrtGenaiAxes,
    OrtOnnxAxes,
    SpaceConfig,
    TensorRTAxes,
    TorchAxes,
    TorchCbAxes,
)
from optimizer.config.target import ENERGY_SOURCES, TARGET_KINDS, TargetConfig
from optimizer.config.workload import (
    ARRIVALS,
    LENGTH_KINDS,
    WORKLOAD_KINDS,
    LengthConfig,
    SloConfig,
    WorkloadConfig,
)

__all__ = [
    "ARRIVALS",
    "BACKENDS",
    "CACHE_ENV",
    "CB_ATTENTION",
    "CB_PAGE_SIZES",
    "CB_PRECISIONS",
    "CB_QUANTIZATIONS",
    "CONFIG_DIR_ENV",
    "CONF_DIR",
    "ENERGY_SOURCES",
    "GENAI_ACCURACY_LEVELS",
    "GENAI_ALGORITHMS",
    "GENAI_BLOCK_SIZES",
    "GENAI_PRECISIONS",
    "GENAI_PROVIDERS",
    "GROUPS",
    "HALF_REFERENCES",
    "LAUNCHERS",
    "LENGTH_KINDS",
    "LLAMACPP_KV_TYPES",
    "LLAMACPP_WEIGHT_TYPES",
    "ONNX_PRECISIONS",
    "ONNX_PROVIDERS",
    "ONNX_QUANTIZATIONS",
    "OPTUNA_ALGORITHMS",
    "QUALITY_REFERENCES",
    "SAMPLERS",
    "SUBMITIT_CLUSTERS",
    "TARGET_KINDS",
    "TENSORRT_PRECISIONS",
    "TORCH_ATTENTION",
    "TORCH_KV_CACHES",
    "TORCH_LOOPS",
    "TORCH_PRECISIONS",
    "TORCH_QUANTIZATIONS",
    "WORKLOAD_KINDS",
    "AccountingConfig",
    "BaselineConfig",
    "LauncherConfig",
    "LengthConfig",
    "LlamaCppAxes",
    "ModelConfig",
    "OptunaConfig",
    "OrtGenaiAxes",
    "OrtOnnxAxes",
    "Preset",
    "QualityConfig",
    "RayConfig",
    "RunConfig",
    "SearchConfig",
    "SloConfig",
    "SlurmConfig",
    "SpaceConfig",
    "TargetConfig",
    "TensorRTAxes",
    "TorchAxes",
    "TorchCbAxes",
    "WorkloadConfig",
    "cache_dir_from",
    "check_config_dir",
    "compose_run_config",
    "config_dir_from",
    "expand_model_shorthand",
    "group_options",
    "presets",
    "register_configs",
]
