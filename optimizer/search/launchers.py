"""Run `run_worker` on existing engines: a process per worker here, Ray tasks, or a SLURM array (submitit).

`launch_search` turns the config into one WorkerSpec per worker and starts them on the configured
engine. Each engine only starts the workers and hands back their reports; which candidate a worker takes is
settled in the store. A worker that fails is logged and the search goes on with the others: what
they finished is in the store either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy import exc

from optimizer.backends.torch_parallel import RANKS_ENV
from optimizer.config import RayConfig, RunConfig, SlurmConfig
from optimizer.errors import UserError
from optimizer.host_cpu import usable_cores
from optimizer.interrupts import sigterm_interrupts
from optimizer.processes import die_with_parent
from optimizer.search.ray_cpu_sharing import warn_of_shared_ray_nodes
from optimizer.search.roofline import RooflineRates
from optimizer.search.runner import WorkerReport
from optimizer.search.watchdog import HUNG_EXIT_CODE
from optimizer.search.workers import WorkerSpec, check_workers, local_gpus, run_worker
from optimizer.store import open_database, release_process_leases
from optimizer.target import TargetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launched:
    reports: list[WorkerReport]
    dry_run: Path | None = None  # launcher.slurm.dry_run: the folder with the unsubmitted jobs


def launch_search(
    cfg: RunConfig,
    target: TargetSpec,
    context: str,
    run_id: str,
    idle_watts: float,
    rates: RooflineRates | None,
) -> Launched:
    """Start `cfg.search.workers` workers on `cfg.launcher` and wait for their reports."""
    check_workers(cfg, target)
    count = cfg.search.workers
    # several local GPU workers get a GPU each; the only one sees every GPU, as the coordinator
    # does: check_workers lets it run layouts of several GPUs, which a single visible one refuses
    own_gpus = cfg.launcher.kind == "local" and target.is_cuda and count > 1
    devices = local_gpus(cfg, target) if own_gpus else [None] * count
    deadline = time.time() + cfg.search.budget_minutes * 60  # one budget for all workers
    specs = [
        WorkerSpec(
            cfg=cfg if device is None else replace(cfg, target=replace(cfg.target, device_index=0)),
            index=index,
            context=context,
            run_id=run_id,
            deadline_epoch=deadline,
            rates=rates,
            coordinator_host=socket.gethostname(),
            idle_watts=idle_watts,
            visible_device=device,
        )
        for index, device in enumerate(devices)
    ]
    log.info("launching %d workers (%s)", count, cfg.launcher.kind)
    if cfg.launcher.kind == "ray":
        warn_of_shared_ray_nodes(cfg, target)
        return Launched(on_ray(cfg.launcher.ray, specs, gpu=target.is_cuda))
    if cfg.launcher.kind == "slurm":
        slurm = cfg.launcher.slurm
        if slurm.dry_run:
            return Launched([], dry_run=slurm_dry_run(slurm, specs))
        return Launched(on_slurm(slurm, specs))
    return Launched(local_processes(specs))


def local_processes(
    specs: Sequence[WorkerSpec], work: Callable[[WorkerSpec], WorkerReport] = run_worker
) -> list[WorkerReport]:
    """One fresh process per worker (spawned: no CUDA state or torch threads inherited), each on its
    own: a worker killed by its candidate (a native crash, the out-of-memory killer) ends alone,
    where a process pool would have ended every worker with it."""
    context = multiprocessing.get_context("spawn")
    started: list[tuple[BaseProcess, Connection]] = []
    try:
        for spec in specs:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_report_through, args=(work, spec, sender), name=f"worker-{spec.index}"
            )
            process.start()
            sender.close()  # the child's end: reading gets EOF when the child is gone
            started.append((process, receiver))
        return _gather([functools.partial(_report_of, process, receiver) for process, receiver in started])
    finally:
        killed = _stop([process for process, _ in started])
        if killed:
            _release_leases(specs[0].cfg.store_path, killed)


def _stop(processes: Sequence[BaseProcess], grace_seconds: float = 30.0) -> list[int]:
    """Stop workers still running when the coordinator leaves early (Ctrl-C, SIGTERM): they give
    their leases up as an interrupted run does; one that does not stop in time (inside a long
    native call) is killed. Returns the pids of those killed."""
    running = [p for p in processes if p.is_alive()]
    for process in running:
        process.terminate()  # SIGTERM: a KeyboardInterrupt inside the worker
    deadline = time.monotonic() + grace_seconds
    killed: list[int] = []
    for process in running:
        process.join(max(deadline - time.monotonic(), 0.0))
        if process.is_alive() and process.pid is not None:
            process.kill()
            process.join()
            killed.append(process.pid)
    return killed


def _release_leases(store_path: str, pids: Sequence[int]) -> None:
    """Give up the leases of workers killed by `_stop`, which could not: the next run must not
    count their candidates' deaths (two fail a candidate)."""
    try:
        engine = open_database(store_path)
        for pid in pids:
            release_process_leases(engine, pid)
    except (exc.SQLAlchemyError, UserError) as error:  # they lapse instead, each counted as a death
        log.warning("could not give up the leases of killed workers %s: %s", pids, error)


def _report_through(work: Callable[[WorkerSpec], WorkerReport], spec: WorkerSpec, sender: Connection) -> None:
    # The coordinator stops its workers, once each (`_stop`): a Ctrl-C reaches the whole process
    # group, and a second interrupt could land inside a worker's clean-up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_interrupts():
            # a coordinator killed outright (SIGKILL, the out-of-memory killer) stops its workers
            # as `_stop` would have: they give their leases up, and a resumed run finds none busy
            die_with_parent(signal.SIGTERM)
            report = work(spec)
    except KeyboardInterrupt:
        _tell(sender, ("error", "interrupted"))
        sys.exit(130)  # the coordinator says so once; no traceback per worker
    except UserError as error:  # bad input (a context that differs): the coordinator raises it again
        _tell(sender, ("user_error", (error.field, error.problem, error.fix)))
        sys.exit(2)
    except BaseException as error:
        _tell(sender, ("error", f"{type(error).__name__}: {error}"))
        raise
    _tell(sender, ("report", report))


def _tell(sender: Connection, message: tuple[str, Any]) -> None:
    """Send the coordinator this worker's outcome, unless it is gone (it died: nobody reads)."""
    with contextlib.suppress(BrokenPipeError):
        sender.send(message)


def _report_of(process: BaseProcess, receiver: Connection) -> WorkerReport:
    try:
        kind, payload = receiver.recv()
    except EOFError:  # gone without a word: killed, or crashed in native code
        kind, payload = "error", None
    process.join()
    if kind == "report":
        return payload
    if kind == "user_error":  # one message and exit 2 from the CLI, as for the coordinator's own
        raise UserError(*payload)
    if process.exitcode == HUNG_EXIT_CODE:  # its watchdog ended it (search/watchdog.py)
        raise WorkerHung(process.name)
    raise WorkerDied(payload or f"the process ended with exit code {process.exitcode} and no report")


class WorkerDied(RuntimeError):
    """A local worker process that ended without its report."""


class WorkerHung(UserError):
    """A local worker ended by its watchdog: a candidate hung past its timeout. A UserError: one
    message and no traceback, also when every worker hung."""

    def __init__(self, name: str) -> None:
        super().__init__(
            "search.candidate_timeout_minutes",
            f"{name} ended (exit code {HUNG_EXIT_CODE}): a candidate hung past it; the worker's log "
            "above names it and shows every thread's stack, and it is recorded failed",
            "run the same command again to resume (the hung candidate is not built again), or raise "
            "search.candidate_timeout_minutes if it is only slow",
        )


def on_ray(cfg: RayConfig, specs: Sequence[WorkerSpec], gpu: bool) -> list[WorkerReport]:
    """Ray tasks with one GPU each on GPU targets; a layout candidate's ranks are Ray actors in a
    placement group of their own (backends/torch_parallel/ray_ranks.py). Without an address, a Ray
    instance on this machine, bound to loopback, started here and stopped when the workers are done."""
    with ray_instance(cfg, len(specs)):
        import ray

        task = ray.remote(
            num_gpus=1 if gpu else 0,
            num_cpus=cfg.cpus_per_worker,
            max_retries=0,
            # a candidate's replicas and tensor-parallel ranks: Ray actors in a placement group
            runtime_env={"env_vars": {RANKS_ENV: "ray"}},
        )(_refusal_returned)
        refs = [task.remote(run_worker, spec) for spec in specs]

        def waiter(ref: Any) -> Callable[[], WorkerReport]:
            return lambda: _refusal_raised(ray.get(ref))

        def cancel() -> None:
            for ref in refs:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: it gives its leases up

        return _gather_or_cancel([waiter(ref) for ref in refs], cancel)


@contextmanager
def ray_instance(cfg: RayConfig, workers: int) -> Iterator[None]:
    """Connected to Ray for the block: the cluster at `cfg.address`, or an instance on this machine
    started here (and stopped after) unless this process is already connected."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if cfg.address is None:
        # each worker may hold a layout of every core at once, as local workers share the CPU
        # (their windows take turns: device_lock.py): with the cores counted once, a worker's
        # layout waited for another's ranks, which waited for its build to leave the device lock,
        # until the placement timeout failed it. A worker's reservation comes on top: it waits
        # while its candidate's ranks (one bundle per rank) run.
        layouts = max(workers, 1) * usable_cores()
        cpus = layouts + math.ceil(workers * cfg.cpus_per_worker)
        options |= {"_node_ip_address": "127.0.0.1", "num_cpus": cpus}
        # Ray starts its workers at nice 15: beside any other load, a candidate would be measured
        # starved of CPU (slower, and its energy spread over a longer window). The raylet started
        # here reads this; a cluster's own setting is its operator's (run_worker warns of it).
        os.environ.setdefault("RAY_worker_niceness", "0")
    else:
        options["address"] = cfg.address
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(**options)
    # ray.init installs its own SIGTERM handler, which exits without a KeyboardInterrupt: the
    # workers would not be stopped and the run not end as interrupted (interrupts.py)
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    try:
        yield
    finally:
        ray.shutdown()


def _slurm_parameters(cfg: SlurmConfig, count: int) -> dict[str, Any]:
    """sbatch settings of the array job: one task per worker, each with its own GPU(s)."""
    parameters: dict[str, Any] = {
        "job_name": "wattsmith",
        "time": cfg.timeout_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": cfg.cpus_per_task,
        "array_parallelism": count,
        "setup": list(cfg.setup),
    }
    if cfg.gpus_per_node:
        parameters["gpus_per_node"] = cfg.gpus_per_node
    if cfg.partition:
        parameters["partition"] = cfg.partition
    if cfg.account:
        parameters["account"] = cfg.account
    if cfg.mem_gb:
        # a fraction in MB, rounded up: int() gave 7.5 GB as 7GB, less than was asked for
        gb = float(cfg.mem_gb)
        parameters["mem"] = f"{int(gb)}GB" if gb.is_integer() else f"{math.ceil(gb * 1024)}MB"
    return parameters


def on_slurm(cfg: SlurmConfig, specs: Sequence[WorkerSpec]) -> list[WorkerReport]:
    """A SLURM array job, one task per worker (`cluster: local` runs the same jobs as processes)."""
    import submitit

    executor: Any
    if cfg.cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=cfg.folder)
        executor.update_parameters(**_slurm_parameters(cfg, len(specs)))  # submitit validates each
    else:
        executor = submitit.AutoExecutor(folder=cfg.folder, cluster=cfg.cluster)
        executor.update_parameters(timeout_min=cfg.timeout_min, gpus_per_node=cfg.gpus_per_node)
    jobs = executor.map_array(_refusal_returned, [run_worker] * len(specs), list(specs))
    log.info("submitted %s", ", ".join(str(job.job_id) for job in jobs))

    def waiter(job: Any) -> Callable[[], WorkerReport]:
        return lambda: _refusal_raised(job.result())

    def cancel() -> None:
        for job in jobs:
            job.cancel(check=False)  # one already ended: nothing to cancel, no error

    return _gather_or_cancel([waiter(job) for job in jobs], cancel)


@dataclass(frozen=True)
class _Refusal:
    """A Ray task's or SLURM job's UserError, returned as a value: raised, it would reach the
    coordinator as a traceback (submitit keeps only its text; Ray cannot unpickle it, UserError
    taking three arguments), where a local worker's is raised again as the same UserError."""

    field: str
    problem: str
    fix: str


def _refusal_returned(
    work: Callable[[WorkerSpec], WorkerReport], spec: WorkerSpec
) -> WorkerReport | _Refusal:
    """`work(spec)` inside a Ray task or SLURM job (`work` travels with it: run_worker)."""
    try:
        return work(spec)
    except UserError as error:
        return _Refusal(error.field, error.problem, error.fix)


def _refusal_raised(outcome: WorkerReport | _Refusal) -> WorkerReport:
    """The coordinator's side of `_refusal_returned`: the CLI's one message and exit 2."""
    if isinstance(outcome, _Refusal):
        raise UserError(outcome.field, outcome.problem, outcome.fix)
    return outcome


def slurm_dry_run(cfg: SlurmConfig, specs: Sequence[WorkerSpec]) -> Path:
    """Write what `on_slurm` would submit, without SLURM: the array job's sbatch file and one
    pickled job per worker, in the format submitit's runner (`submitit.core._submit`) loads."""
    from submitit.core.utils import DelayedSubmission

    # submitit has no dry run and its SlurmExecutor needs srun: render with the helper it submits
    # through (pinned by tests/unit/search/test_workers.py)
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(cfg.folder).expanduser() / "dry-run"
    folder.mkdir(parents=True, exist_ok=True)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    sbatch = _make_sbatch_string(
        command=command, folder=folder, map_count=len(specs), **_slurm_parameters(cfg, len(specs))
    )
    (folder / "submission.sh").write_text(sbatch)
    for spec in specs:
        DelayedSubmission(run_worker, spec).dump(folder / f"worker-{spec.index}.pkl")
    log.info("dry run: wrote %s and %d pickled worker jobs", folder / "submission.sh", len(specs))
    return folder


def _gather_or_cancel(
    waits: Sequence[Callable[[], WorkerReport]], cancel: Callable[[], None]
) -> list[WorkerReport]:
    """`_gather`, cancelling the workers when the coordinator leaves early (Ctrl-C, SIGTERM): jobs
    of a cluster outlive it, measuring and renewing their leases, and a resumed run would find them
    still holding candidates."""
    try:
        return _gather(waits)
    except BaseException:
        cancel()
        raise


def _gather(waits: Sequence[Callable[[], WorkerReport]]) -> list[WorkerReport]:
    """Every worker's report; a failed worker is logged, and only when all failed is it an error."""
    reports: list[WorkerReport] = []
    errors: list[BaseException] = []
    for index, wait in enumerate(waits):
        try:
            reports.append(wait())
        except Exception as error:  # noqa: BLE001 - one worker's failure must not lose the others'
            log.error("worker %d failed: %s: %s", index, type(error).__name__, error)
            errors.append(error)
    if errors and not reports:
        raise errors[0]
    return reports
