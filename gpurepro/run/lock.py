"""A run in progress holds a lock file in its directory: who runs it (host, pid, process start time).

Retention and bundling ask `holder()` whether a run is in use. A lock whose process is gone (killed with
SIGKILL, machine rebooted) is stale and ignored; the process start time guards against a recycled pid.
A lock written on another host cannot be checked from here and counts as live.
"""
from __future__ import annotations

import contextlib
import fcntl
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


# --- a container shared by runs ---------------------------------------------------------------------
LOCK_DIR_ENV = "GPUREPRO_LOCK_DIR"
_HELD: dict[str, int] = {}  # this process's users locks per container: waiting on one of them would never end


class ContainerLock:
    """Runs on one host that share a container (one daemon, one container name) run side by side; only what
    would break another run is serialised, with flock(2) locks the kernel drops when a process dies:

    - `starting()`: finding, creating or starting the container, one run at a time (two runs creating it at
      once would collide on the name);
    - every run then holds the container's *users* lock, shared, until `release()`;
    - `wait_alone()`: recreating the container (its image changed) needs the users lock exclusively, so it
      waits, saying so, until the runs using the old container have ended.
    """

    def __init__(self, key: str, directory: pathlib.Path | None = None):
        import hashlib
        import tempfile

        base = pathlib.Path(directory or os.environ.get(LOCK_DIR_ENV) or
                            pathlib.Path(tempfile.gettempdir()) / "gpurepro-locks")
        name = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.key = key
        self.container = key.rsplit(" ", 1)[-1]  # the key is "<daemon endpoint> <container name>"
        self.base = base
        self.start_path = base / f"{name}.start"
        self.users_path = base / f"{name}.users"
        self._users: int | None = None
        self._shared = False

    def _open(self, path: pathlib.Path) -> int:
        if not self.base.is_dir():
            self.base.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(self.base, 0o1777)  # shared by every user of the host's Docker daemon, like /tmp
        # read-only is enough for flock, and works on a file another user created
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def starting(self):
        """Hold the start lock; on a clean exit this run becomes one of the container's users."""
        fd = self._open(self.start_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held by another run only while it starts the container: seconds
            if self._users is None:
                self._users = self._open(self.users_path)
            try:
                yield self
                # EX -> SH is not atomic, but only a holder of the start lock (this run) asks for EX
                fcntl.flock(self._users, fcntl.LOCK_SH)
                if not self._shared:
                    _HELD[self.key] = _HELD.get(self.key, 0) + 1
                    self._shared = True
            except BaseException:
                self.release()
                raise
        finally:
            os.close(fd)

    def wait_alone(self, say=lambda message: None, why: str = "") -> None:
        """Inside starting(): wait until no other run uses the container (this run's users lock exclusive)."""
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _HELD.get(self.key):
                from ..errors import InfraError

                raise InfraError(f"container {self.container} is in use by this same command and "
                                 f"would have to be recreated ({why or 'its image changed'})",
                                 hint="give each toolchain or target its own container name") from None
            say(f"waiting for the other run(s) using container {self.container} to finish"
                f"{' before ' + why if why else ''} (Ctrl-C to stop)")
            fcntl.flock(self._users, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._users is not None:
            with contextlib.suppress(OSError):
                os.close(self._users)
            self._users = None
        if self._shared:
            _HELD[self.key] -= 1
            self._shared = False
