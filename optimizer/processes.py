"""This host's processes as the store's leases and the caches name them: which host (and PID
namespace) a pid belongs to, whether it still runs, and the temporary copies (written aside, then
renamed into place) that a process killed outright left behind; and a child (a multiprocessing
child, or a subprocess) that ends with its parent."""

from __future__ import annotations

import ctypes
import glob
import logging
import multiprocessing
import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def host_name() -> str:
    """This host: the hostname, and the PID namespace where Linux has one (containers sharing a
    hostname see different processes under the same pids)."""
    try:
        namespace = f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return socket.gethostname() + namespace


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host (this PID namespace) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that ended but was not yet reaped by its parent (a coordinator still waiting on
    another worker) still answers kill(pid, 0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def host_tag() -> str:
    """This host (`host_name`) in a form a file name can carry."""
    return host_name().replace("/", "_")


def temp_path(path: Path) -> Path:
    """This process's copy of `path` to write aside and rename into place: `<name>.tmp-<pid>-<host
    tag>`, so that `remove_stale_temps` can tell whose it is (and two hosts sharing a cache never
    write, or clear, the same one)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{host_tag()}")


def remove_stale_temps(path: Path) -> None:
    """Remove the copies of `path` left by processes of this host that are gone: one killed outright
    (SIGKILL, the out-of-memory killer) cleans nothing up, and its copy may be GBs. Another host's
    (a cache on a shared filesystem) may still be written; a name without a host predates them."""
    prefix = f"{path.name}.tmp-"
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        pid_text, _, host = tmp.name[len(prefix) :].partition("-")
        if pid_text.isdigit() and host in ("", host_tag()) and not process_alive(int(pid_text)):
            log.info("removing %s, left by a process that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def die_with_parent(signum: signal.Signals) -> None:
    """Have the kernel send `signum` to this process (a multiprocessing child) when its parent dies.
    A parent that died before this call (the child was still starting: importing its main module,
    torch) sends nothing: then this process sends it to itself now, as the kernel would have."""
    libc = _libc()
    if libc is None:
        return  # not Linux: the parent's own clean-up still ends its children
    if libc.prctl(PR_SET_PDEATHSIG, int(signum)) != 0:
        return
    parent = multiprocessing.parent_process()
    # checked after prctl: a parent that dies from here on is the kernel's to report
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signum)


def killed_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.run/Popen: the kernel SIGKILLs the child when this process
    dies, even killed outright (the out-of-memory killer, a launcher's kill), instead of leaving it
    to run on, holding its memory and CPUs beside the next run. None (no preexec_fn) where there
    is no prctl. The kernel sends the signal when the forking *thread* ends: call subprocess.run,
    or wait on the Popen, from the thread that outlives the child."""
    libc = _libc()
    if libc is None:
        return None
    # looked up before the fork: the child, between fork and exec, only calls prctl and getppid
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        # a parent that died before prctl sends nothing: the child then ends itself
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None  # not Linux (glibc)
