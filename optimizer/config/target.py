"""Schema of conf/target/: the deployment target and its capabilities."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING

from optimizer.config.checks import require, require_finite, require_subset

TARGET_KINDS = ("auto", "cpu", "cuda")
ENERGY_SOURCES = ("auto", "nvml", "rapl", "estimate")
CPU_ONLY_SOURCES = ("rapl", "estimate")  # never a GPU's energy
# The optional numeric capabilities, each with a plausible value for a fix (an H100's)
CAPABILITY_EXAMPLES = {
    "memory_gib": 24,
    "tdp_watts": 700,
    "memory_bandwidth_gb_per_s": 3350,
    "peak_bf16_tflops": 989,
}


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
    # Not a setting: the user's config directory it was composed from (compose.run_config_from),
    # whose preset of the GPU target=auto detects gives that GPU's figures (optimizer/target.py).
    # An InitVar, so neither Hydra's schema, asdict (--show-config, a run's config.yaml) nor
    # equality sees it, while dataclasses.replace carries it over (it reads the attribute).
    if TYPE_CHECKING:  # for mypy, the attribute __post_init__ sets
        config_dir: str | None = None
    else:
        config_dir: InitVar[str | None] = None

    def __post_init__(self, config_dir: str | None = None) -> None:
        self.config_dir = config_dir
        require_finite(self, "target")
        require_subset([self.kind], TARGET_KINDS, "target.kind")
        require_subset([self.energy_source], ENERGY_SOURCES, "target.energy_source")
        # found before the model loads; target=auto resolved to a GPU is refused by make_meter
        require(
            not (self.kind == "cuda" and self.energy_source in CPU_ONLY_SOURCES),
            "target.energy_source",
            f"is {self.energy_source}, which meters the CPU alone, but the target is a GPU: "
            "its energy would not be counted",
            "use target.energy_source=auto or nvml to measure the GPU, or target=cpu to optimize for the CPU",
        )
        require(self.device_index >= 0, "target.device_index", "is negative", "use 0 for the first GPU")
        # a capability <= 0 would make the roofline bounds and the memory budget meaningless
        for name, example in CAPABILITY_EXAMPLES.items():
            value = getattr(self, name)
            if value is not None:
                require(
                    value > 0,
                    f"target.{name}",
                    f"must be > 0, got {value}",
                    f"e.g. target.{name}={example}, or null to detect it",
                )
        require(
            self.cpu_active_watts_per_core > 0,
            "target.cpu_active_watts_per_core",
            f"is {self.cpu_active_watts_per_core}: a busy core's estimated watts must be > 0",
            "use the CPU's TDP divided by its cores",
        )
        require(
            self.cpu_idle_watts_per_core >= 0,
            "target.cpu_idle_watts_per_core",
            f"is {self.cpu_idle_watts_per_core}: an idle core's estimated watts must be >= 0",
            "e.g. 1.5 (its static power per core), or 0 to charge busy time only",
        )
