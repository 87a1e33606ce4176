"""The root of the run configuration (conf/config.yaml): one field per conf/ group plus the paths."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from optimizer.config.accounting import AccountingConfig
from optimizer.config.checks import require
from optimizer.config.launcher import LauncherConfig
from optimizer.config.model import ModelConfig
from optimizer.config.quality import QualityConfig
from optimizer.config.search import SearchConfig
from optimizer.config.space import SpaceConfig
from optimizer.config.target import TargetConfig
from optimizer.config.workload import WorkloadConfig
from optimizer.errors import UserError

CACHE_ENV = "WATTSMITH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/wattsmith"


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
    cache_dir: str = DEFAULT_CACHE_DIR
    # Not a setting (Hydra never sees it): the output_dir conf/config.yaml composed, naming the
    # second the run was composed, "" when the caller gave one. While output_dir is still it,
    # optimize() claims a directory of the run's own (a second run in that second gets `-2`).
    composed_output_dir: str = field(default="", compare=False, metadata={"omegaconf_ignore": True})

    def __post_init__(self) -> None:
        for name in ("output_dir", "store_path", "cache_dir"):
            require(bool(str(getattr(self, name)).strip()), name, "is empty", f"give a path for {name}")
        # checked here, not after loading the model: a file cannot be shared by other machines
        require(
            not self.launcher.spans_nodes or str(self.store_path).startswith("postgres"),  # postgres(ql)://
            "store_path",
            f"workers on other nodes cannot share the SQLite file {self.store_path}",
            "use a PostgreSQL URL that every node reaches, e.g. store_path=postgresql://user@db-host/wattsmith",
        )

    def settings(self) -> dict[str, Any]:
        """The settings, as `--show-config` prints them and a run's config.yaml records them."""
        data = asdict(self)
        del data["composed_output_dir"], data["search"]["patience_chosen"]
        return data


_CACHE_FLAGS = "a search also takes `optimize cache_dir=DIR`, verify `--cache-dir DIR`"


def cache_dir_from(environ: Mapping[str, str], flags: str = _CACHE_FLAGS) -> str:
    """cache_dir's default: WATTSMITH_CACHE, else ~/.cache/wattsmith. Set but empty is refused, not
    read as unset: a variable meant to hold a path and left empty would put the caches elsewhere.
    `flags` ends the fix: how the caller's command takes a cache instead (verify's alone names
    only its own, as `optimize verify` refuses `cache_dir=DIR`)."""
    value = environ.get(CACHE_ENV)
    if value is None:
        return DEFAULT_CACHE_DIR
    if not value.strip():
        raise UserError(
            CACHE_ENV,
            "is set but empty",
            # the llama.cpp build script reads only the variable
            f"unset it (unset {CACHE_ENV}: caches go to {DEFAULT_CACHE_DIR}) or give it a path "
            f"({CACHE_ENV}=DIR); {flags}",
        )
    return value
