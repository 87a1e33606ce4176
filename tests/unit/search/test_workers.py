"""search.workers on existing engines, on the tiny model: local processes, a local Ray instance,
and the SLURM path as a dry run. Every worker meets the others at the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from optimizer.config import compose_run_config
from optimizer.errors import UserError
from optimizer.search import workers as workers_module
from optimizer.search.workers import check_workers, local_gpus

pytestmark = pytest.mark.slow


def tiny_run(model_dir: Path, root: Path, *extra: str) -> list[str]:
    # target=cpu with the real core count and an explicit estimate: the workers are other
    # processes, which must derive the same target fingerprint and energy source as this one
    return [
        f"model={model_dir}",
        "target=cpu",
        "target.energy_source=estimate",
        "workload=quick",
        "space=cpu-batch",  # static batches of plain torch: 2 precisions x the batch sizes
        "workload.min_window_seconds=0.2",
        # no latency SLO: these tests are about the workers meeting at the store, and whether a
        # candidate is feasible must not depend on how fast a loaded machine decodes (under load
        # every candidate missed TPOT p90 250 ms, and the run had no best)
        "workload.slo.tpot_ms=null",
        "workload.repeats=2",
        "workload.idle_seconds=0.1",
        "space.batch_sizes=[1,2,4]",
        "space.torch.quantizations=[none]",
        "quality.num_sequences=2",
        "quality.seq_tokens=32",
        f"output_dir={root / 'run'}",
        f"store_path={root / 'trials.db'}",
        f"cache_dir={root / 'cache'}",
        *extra,
    ]


def stored_keys(path: Path) -> list[str]:
    """The search's rows: the finalists' rounds (each in a context of its own) are left out."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT candidate_key, result FROM wattsmith_trials").fetchall()
    return [key for key, result in rows if json.loads(result).get("role") != "finalist"]


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_two_workers_search_once_each_candidate(
    launcher: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optimizer

    if launcher == "ray":
        pytest.importorskip("ray", reason="ray is in the `cluster` extra")
        monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # the local instance starts its workers at this process's priority (launchers.ray_instance):
        # at Ray's nice 15, on a loaded machine they got ~3% of a core and ran out of the budget
        monkeypatch.delenv("RAY_worker_niceness", raising=False)
    cfg = compose_run_config(
        tiny_run(tiny_model_dir, tmp_path, "search=optuna", "search.workers=2", f"launcher={launcher}")
    )
    result = optimizer.optimize(cfg)
    assert result.best is not None and result.best.feasible
    keys = stored_keys(tmp_path / "trials.db")
    assert len(keys) == 6 and Counter(keys).most_common(1)[0][1] == 1  # 2 precisions x 3 batches, once each
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"2 worker(s) ({launcher})" in report
    assert "evaluated per worker:" in report
    assert {r.candidate.key() for r in result.results} == set(keys)


def test_a_local_worker_that_dies_ends_alone(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from optimizer.search.launchers import WorkerDied, local_processes
    from optimizer.search.runner import WorkerReport

    from . import fake_worker

    both = [SimpleNamespace(index=0), SimpleNamespace(index=1)]
    # the survivor's report comes back (a process pool would have ended it with the other)
    assert local_processes(both, fake_worker.report_or_die) == [WorkerReport(evaluated=3)]  # type: ignore[arg-type]
    assert "worker 0 failed: WorkerDied: the process ended with exit code 137 and no report" in caplog.text
    with pytest.raises(WorkerDied, match="exit code 137"):
        local_processes(both[:1], fake_worker.report_or_die)  # type: ignore[arg-type]


def test_bad_input_found_by_local_workers_is_a_user_error_of_the_coordinator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CLI's one message and exit 2, not a WorkerDied traceback and exit 1."""
    from types import SimpleNamespace

    from optimizer.search.launchers import local_processes

    from . import fake_worker

    both = [SimpleNamespace(index=0), SimpleNamespace(index=1)]
    with pytest.raises(UserError) as info:
        local_processes(both, fake_worker.refuse_the_context)  # type: ignore[arg-type]
    error = info.value
    assert (error.field, error.problem, error.fix) == (
        "target",
        "worker 0 measures in another context",
        "use the same versions",
    )
    assert "worker 1 failed: UserError: target: worker 1 measures in another context" in caplog.text


def test_workers_left_running_by_a_coordinator_that_stops_give_their_leases_up(tmp_path: Path) -> None:
    import multiprocessing
    import os
    import signal
    from types import SimpleNamespace

    from optimizer.search.launchers import _report_through, _stop
    from optimizer.store import TrialStore

    from . import fake_worker

    url = str(tmp_path / "t.db")
    store = TrialStore(url, "ctx")
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    spec = SimpleNamespace(index=0, cfg=SimpleNamespace(store_path=url))
    worker = context.Process(target=_report_through, args=(fake_worker.hold_a_lease, spec, sender))
    worker.start()
    deadline = time.time() + 120
    while store.claim_owner("cand") is None and time.time() < deadline:
        time.sleep(0.1)
    assert store.claim_owner("cand") is not None
    # Ctrl-C reaches every process of the group: a worker waits for the coordinator's one stop
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGINT)
    worker.join(1.0)
    assert worker.is_alive() and store.claim_owner("cand") is not None
    _stop([worker])
    assert worker.exitcode == 130  # interrupted, not killed
    assert receiver.recv() == ("error", "interrupted")
    assert store.claim_owner("cand") is None  # nothing for a resumed run to take over
    assert store.claim("cand", 60) and store.deaths_since("cand", 0.0) == 0


def test_a_worker_killed_by_a_coordinator_that_stops_leaves_no_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker inside a long native call ignores SIGTERM and is killed after the grace period:
    its leases_kept never gives its lease up, so the coordinator does, or the next run would count
    a death of its candidate (two fail it)."""
    import functools
    from types import SimpleNamespace

    from optimizer.search import launchers
    from optimizer.store import TrialStore

    from . import fake_worker

    url = str(tmp_path / "t.db")
    store = TrialStore(url, "ctx")
    store.claim("other", 600)  # this process's lease: not the killed worker's

    def interrupted(_waits: object) -> list[object]:  # Ctrl-C while the worker measures
        deadline = time.time() + 120
        while store.claim_owner("cand") is None and time.time() < deadline:
            time.sleep(0.1)
        assert store.claim_owner("cand") is not None
        raise KeyboardInterrupt

    monkeypatch.setattr(launchers, "_gather", interrupted)
    monkeypatch.setattr(launchers, "_stop", functools.partial(launchers._stop, grace_seconds=1.0))
    spec = SimpleNamespace(index=0, cfg=SimpleNamespace(store_path=url))
    with pytest.raises(KeyboardInterrupt):
        launchers.local_processes([spec], fake_worker.hold_a_lease_deaf)  # type: ignore[list-item]
    assert store.claim_owner("cand") is None
    assert store.claim_owner("other") == store.worker
    assert store.claim("cand", 60) and store.deaths_since("cand", 0.0) == 0


def test_slurm_dry_run_writes_the_array_job_and_submits_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    from submitit.core.utils import DelayedSubmission

    import optimizer

    folder = tmp_path / "slurm"
    cfg = compose_run_config(
        tiny_run(
            tiny_model_dir,
            tmp_path,
            "search.workers=3",
            "launcher=slurm",
            "launcher.slurm.dry_run=true",
            "launcher.slurm.partition=gpu",
            "launcher.slurm.gpus_per_node=1",
            "launcher.slurm.setup=[source .venv/bin/activate]",
            f"launcher.slurm.folder={folder}",
        )
    )
    result = optimizer.optimize(cfg)
    assert result.dry_run == folder / "dry-run"
    sbatch = (folder / "dry-run" / "submission.sh").read_text()
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
    ):
        assert line in sbatch, line
    assert "source .venv/bin/activate" in sbatch
    assert "submitit.core._submit" in sbatch
    jobs = [DelayedSubmission.load(folder / "dry-run" / f"worker-{i}.pkl") for i in range(3)]
    assert [job.function for job in jobs] == [workers_module.run_worker] * 3
    assert [job.args[0].index for job in jobs] == [0, 1, 2]
    assert len({job.args[0].run_id for job in jobs}) == 1  # one run, one store context
    assert (
        not (tmp_path / "trials.db").exists() or stored_keys(tmp_path / "trials.db") == []
    )  # nothing measured


def test_worker_layouts_that_cannot_work_are_refused(make_target, monkeypatch: pytest.MonkeyPatch) -> None:
    # a file other nodes cannot share is refused as the config is composed, before any model loads
    for remote in (["launcher=slurm", "search.workers=2"], ["launcher=ray", "launcher.ray.address=auto"]):
        with pytest.raises(UserError, match="store_path") as refused:
            compose_run_config([*remote, "store_path=/tmp/x.db"])
        assert "PostgreSQL URL" in refused.value.fix
    for store in ("postgresql://h/db", "postgres://h/db"):
        check_workers(compose_run_config(["launcher=slurm", f"store_path={store}"]), make_target())
    # on one machine (local SLURM jobs, a dry run, a local Ray instance) a file is shared
    for local in (
        ["launcher=slurm", "launcher.slurm.cluster=local"],
        ["launcher=slurm", "launcher.slurm.dry_run=true"],
        ["launcher=ray"],
    ):
        check_workers(compose_run_config([*local, "store_path=/tmp/x.db"]), make_target())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    too_many = compose_run_config(["search.workers=3"])
    with pytest.raises(UserError, match="search.workers"):
        check_workers(too_many, make_target(kind="cuda"))
    two = compose_run_config(["search.workers=2"])
    check_workers(two, make_target(kind="cuda"))
    # the accepted layout gives each worker a whole GPU, named by its physical id
    assert local_gpus(two, make_target(kind="cuda")) == ["2", "5"]


def test_local_gpu_workers_start_at_the_target_device_index(
    make_target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPUs below target.device_index are the user's: no worker wraps around onto them."""
    from optimizer.target import GIB, GpuInfo

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    gpu = GpuInfo("NVIDIA H100 80GB HBM3", 1, 80 * GIB, "550.54", (9, 0), 700.0)
    target = make_target(kind="cuda", device="cuda:1", gpu=gpu)
    two = compose_run_config(["search.workers=2", "target.device_index=1"])
    check_workers(two, target)
    assert local_gpus(two, target) == ["5", "7"]
    with pytest.raises(UserError) as refused:
        check_workers(compose_run_config(["search.workers=3", "target.device_index=1"]), target)
    assert refused.value.field == "search.workers"
    assert refused.value.problem == (
        "3 workers but 2 GPU(s) here from target.device_index=1 on: a trial needs a whole GPU"
    )
    assert refused.value.fix.startswith("use search.workers<=2, a lower target.device_index,")


def test_a_local_ray_instance_runs_its_workers_at_our_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray", reason="ray is in the `cluster` extra")
    from optimizer.config import RayConfig
    from optimizer.search.launchers import ray_instance

    monkeypatch.setenv("RAY_worker_niceness", "unset by the test")  # restored after: the product sets it
    monkeypatch.delenv("RAY_worker_niceness")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")

    def niceness() -> int:
        return os.nice(0)

    with ray_instance(RayConfig(), workers=1):
        remote = ray.remote(num_cpus=0)(niceness)
        assert ray.get(remote.remote(), timeout=120) == os.nice(0)  # Ray's default: 15 more
    assert not ray.is_initialized()  # the instance started for the block is stopped after it


def test_a_worker_at_a_lowered_priority_says_so() -> None:
    code = (
        "import logging, os\n"
        "from optimizer.search.workers import warn_if_deprioritized\n"
        "logging.basicConfig(format='%(levelname)s %(message)s')\n"
        "warn_if_deprioritized(0)\n"
        "print('niceness', os.nice(3), flush=True)\n"
        "warn_if_deprioritized(1)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lowered = int(run.stdout.split()[-1])
    assert f"WARNING worker 1 runs at nice {lowered}:" in run.stderr
    assert "RAY_worker_niceness=0" in run.stderr
    niced_already = lowered > 3  # worker 0 ran at this test's own priority: a warning only if niced
    assert ("worker 0 runs" in run.stderr) == niced_already
