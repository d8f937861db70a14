"""A run in progress holds a lock file in its directory: who runs it (host, pid, process start time).

Retention and bundling ask `holder()` whether a run is in use. A lock whose process is gone (killed with
SIGKILL, machine rebooted) is stale and ignored; the process start time guards against a recycled pid.
A lock written on another host cannot be checked from here and counts as live.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket

LOCK_NAME = ".gpurepro.lock"


def _process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); None where unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire(run_path: pathlib.Path) -> pathlib.Path:
    """Write the lock for this process; the caller removes it with release() when the run ends."""
    path = pathlib.Path(run_path) / LOCK_NAME
    data = {"pid": os.getpid(), "hostname": socket.gethostname(), "process_start": _process_start(os.getpid())}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
    except BaseException:  # a full disk: no empty lock left behind (it would read as "in use" forever)
        path.unlink(missing_ok=True)
        raise
    return path


def release(run_path: pathlib.Path) -> None:
    path = pathlib.Path(run_path) / LOCK_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def holder(run_path: pathlib.Path) -> dict | None:
    """The lock's contents if a live process holds the run, else None (no lock, or a stale one)."""
    path = pathlib.Path(run_path) / LOCK_NAME
    try:
        data = json.loads(path.read_text())
        pid = int(data["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {"pid": None, "hostname": None, "why": "unreadable lock file"}  # cannot tell: assume in use
    if data.get("hostname") != socket.gethostname():
        return data
    if not _alive(pid):
        return None
    recorded = data.get("process_start")
    if recorded is not None and _process_start(pid) not in (None, recorded):
        return None  # the pid was recycled by another process
    return data


def describe(lock: dict) -> str:
    if lock.get("why"):
        return lock["why"]
    return f"pid {lock.get('pid')} on {lock.get('hostname')}"
