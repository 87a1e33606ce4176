"""Schema of conf/target/: the deployment target and its capabilities."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from functools import cache
from typing import TYPE_CHECKING

from optimizer.config.checks import require, require_finite, require_subset
from optimizer.config.presets import CONF_DIR

if TYPE_CHECKING:
    from omegaconf import DictConfig

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

    `name` says which preset this is: `auto` detects the board (and takes its preset's figures),
    any other name is that preset (optimizer/target.py). `kind` says which device must run it:
    `auto` whichever is here. A packaged preset's name fixes its kind, so where `kind` is left
    `auto` it is that preset's (`name: h100` is the H100 preset: a CUDA GPU, never the CPU of a
    host without one); a name of the user's own keeps `auto`, a label of whatever is detected.
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
        if self.kind == "auto" and self.name != "auto":
            self.kind = packaged_identity(self.name)[0]
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


@cache
def packaged_identity(name: str) -> tuple[str, str]:
    """The kind and name of the packaged target preset `name` (conf/target/<name>.yaml); auto
    and auto where none is packaged."""
    path = CONF_DIR / "target" / f"{name}.yaml"
    if not re.fullmatch(r"\w[\w.-]*", name) or not path.is_file():
        return "auto", "auto"
    import yaml

    values = yaml.safe_load(path.read_text()) or {}
    return str(values.get("kind", "auto")), str(values.get("name", "auto"))


def keep_packaged_identity(target: DictConfig, overrides: Sequence[str]) -> None:
    """`target=<name>` where the user's preset of a packaged name (--config-dir d with
    d/target/h100.yaml), which Hydra reads instead of the packaged file, leaves `kind` or `name`
    out (auto): the packaged preset's stand in, unless an override sets them. The user's file
    changes the preset's settings, not which preset it is: without this, `target=h100` with a
    `fp8: false` file would detect the machine (kind auto) and fall back to the CPU quietly."""
    chosen = [value for key, _, value in (o.partition("=") for o in overrides) if key.lstrip("+") == "target"]
    preset = chosen[-1].strip().strip("'\"") if chosen else "auto"
    identity = dict(zip(("kind", "name"), packaged_identity(preset), strict=True))
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    for field, value in identity.items():
        if target[field] == "auto" and f"target.{field}" not in given:
            target[field] = value
