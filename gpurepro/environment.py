"""Facts about the machine the tool itself runs on (git state, host) for run.json."""
from __future__ import annotations

import os
import pathlib
import platform
import socket
import subprocess
import sys


def git_state(root: pathlib.Path) -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def host_facts() -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "user": os.environ.get("USER") or os.environ.get("LOGNAME") or "",
    }


def memory_gb() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return pages * size / 2**30
    except (ValueError, OSError):
        return 8.0


def invoked_command(argv: list[str] | None = None) -> list[str]:
    """The command line as a user would retype it: `python -m gpurepro ...` or `invoke ...`.

    Under `python -m`, sys.argv[0] is the module's file path, which means nothing on another machine.
    """
    argv = list(sys.argv if argv is None else argv)
    if argv:
        first = pathlib.PurePath(argv[0])
        if first.name == "__main__.py" and first.parent.name in ("gpurepro", "invoke"):
            argv[0:1] = ["python", "-m", "gpurepro"] if first.parent.name == "gpurepro" else ["invoke"]
        elif first.name in ("invoke", "inv", "gpurepro"):
            argv[0] = first.name
    return argv
