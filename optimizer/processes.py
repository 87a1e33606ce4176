"""This host's processes as the store's leases and the model cache name them: which host (and PID
namespace) a pid belongs to, and whether it still runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path


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
