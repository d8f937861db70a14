"""Facts about the machine the tool itself runs on (git state, host) for run.json."""
from __future__ import annotations

import os
import pathlib
import platform
import socket
import subprocess
import sys


def git_state(root: pathlib.Path) -> dict:
    """The checkout's commit, whether tracked files differ from it, and its branch ("HEAD" when detached): one
    `git status --porcelain=v2 --branch` (a run starts one process, not three)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    headers = {}
    changed = False
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        if line.startswith("# branch."):
            key, _, value = line[len("# branch."):].partition(" ")
            headers[key] = value
        elif line and not line.startswith("#"):
            changed = True
    commit = headers.get("oid")
    if not commit or commit == "(initial)":  # not a repository, or no commit yet
        return {"commit": None, "dirty": None}
    branch = headers.get("head")
    return {"commit": commit, "dirty": changed, "branch": "HEAD" if branch == "(detached)" else branch}


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
