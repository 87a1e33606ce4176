"""Schema of conf/launcher/: where the workers of a search run."""

from __future__ import annotations

from dataclasses import dataclass, field

from optimizer.config.checks import require, require_finite, require_subset

LAUNCHERS = ("local", "ray", "slurm")
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


@dataclass
class RayConfig:
    """Ray: `address` null starts a Ray instance on this machine (loopback only); `auto` or
    `ray://host:10001` joins a running cluster. Each worker is a task with one GPU on GPU targets;
    a layout candidate's ranks are actors in a placement group of their own on the worker's node
    (one bundle per rank: its threads as CPUs, one GPU on a GPU target)."""

    address: str | None = None
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        require_finite(self, "launcher.ray")
        require(self.cpus_per_worker > 0, "launcher.ray.cpus_per_worker", "must be > 0", "e.g. 1")


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
        require_finite(self, "launcher.slurm")
        require_subset([self.cluster], SUBMITIT_CLUSTERS, "launcher.slurm.cluster")
        require(self.timeout_min >= 1, "launcher.slurm.timeout_min", "must be >= 1", "e.g. 240")
        require(self.gpus_per_node >= 0, "launcher.slurm.gpus_per_node", "must be >= 0", "e.g. 1")
        require(self.cpus_per_task >= 1, "launcher.slurm.cpus_per_task", "must be >= 1", "e.g. 8")
        # sbatch gets whole GB (search/launchers.py): below 1 is --mem=0, SLURM's "all the node's
        # memory", and 0 itself would be dropped, leaving the partition's default
        require(
            self.mem_gb is None or self.mem_gb >= 1,
            "launcher.slurm.mem_gb",
            f"is {self.mem_gb} < 1: sbatch gets whole GB, and --mem=0 is all of a node's memory",
            "give GB per node, e.g. launcher.slurm.mem_gb=64, or null for the partition's default",
        )


@dataclass
class LauncherConfig:
    """Where `search.workers` run: processes on this machine, Ray tasks, or SLURM jobs. All of them
    meet at the TrialStore (`store_path`), which must be PostgreSQL when workers span nodes."""

    kind: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        require_subset([self.kind], LAUNCHERS, "launcher.kind")

    @property
    def spans_nodes(self) -> bool:
        """Whether workers may run on other machines (a Ray cluster, SLURM jobs)."""
        ray_cluster = self.kind == "ray" and self.ray.address is not None
        slurm_jobs = self.kind == "slurm" and self.slurm.cluster == "slurm" and not self.slurm.dry_run
        return ray_cluster or slurm_jobs
