"""The host runner: a fresh work directory and subprocesses. How GPU machines without Docker run steps."""
from __future__ import annotations

import os
import pathlib
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import time

from ..archive import _safe_relpath
from ..classify import ExecResult
from ..config import Config
from ..errors import InfraError, NvccMissingError, ToolMissingError
from .base import CappedOutput, Runner

CHUNK = 1 << 16
DRAIN_AFTER_KILL_S = 5  # a killed group's pipe closes at once, unless a process left the group
NVCC_HOST_HINT = ("install the CUDA toolkit and put nvcc on PATH, set compile.nvcc in gpurepro.yaml to its path, "
                  "or use --backend docker")


def _pump(proc: subprocess.Popen, capture: CappedOutput, deadline: float) -> bool:
    """Read proc's output into `capture` until EOF (True) or the deadline (False); never holds more than a chunk."""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not selector.select(left):
                continue
            data = os.read(fd, CHUNK)
            if not data:
                return True
            capture.feed(data)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class HostRunner(Runner):
    name = "host"

    def __init__(self, config: Config, *, log=lambda message: None, require_toolchain: bool = True):
        self.config = config
        self.log = log
        self.require_toolchain = require_toolchain  # kernels.test needs Python, not nvcc or CUTLASS

    def make_work_root(self) -> None:
        root = pathlib.Path(self.work_root())
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InfraError(f"cannot create host work directory {root}: {exc.strerror}") from None

    def start(self) -> None:
        self.make_work_root()
        if not self.require_toolchain:
            return
        if shutil.which(self.config.compile.nvcc) is None:
            raise NvccMissingError(self.config.compile.nvcc, self.where(), hint=NVCC_HOST_HINT)
        headers = pathlib.Path(self.flashinfer_root()) / "3rdparty/cutlass/include/cutlass/version.h"
        if not headers.is_file():
            raise InfraError(
                f"FlashInfer/CUTLASS headers not found under {self.flashinfer_root()}",
                hint="lay them out with `invoke toolchain.headers` or set GPUREPRO_FLASHINFER",
            )

    def work_root(self) -> str:
        return self.config.host.workdir

    def flashinfer_root(self) -> str:
        return self.config.host.flashinfer

    def describe(self) -> dict[str, str]:
        return {"hostname": socket.gethostname()}

    def put_files(self, dest, files, *, executable=frozenset()) -> None:
        base = pathlib.Path(dest)
        for name, data in files.items():
            target = base / _safe_relpath(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o755 if name in executable else 0o644)

    def get_files(self, path) -> dict[str, bytes]:
        base = pathlib.Path(path)
        if not base.is_dir():
            return {}
        return {p.relative_to(base).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*")) if p.is_file() and not p.is_symlink()}

    def read_file(self, path) -> bytes | None:
        target = pathlib.Path(path)
        return target.read_bytes() if target.is_file() and not target.is_symlink() else None

    def remove_dir(self, path) -> None:
        root = pathlib.Path(self.work_root()).resolve()
        target = pathlib.Path(path).resolve()
        if root in target.parents:
            shutil.rmtree(target, ignore_errors=True)

    def where(self) -> str:
        return "PATH on this host"

    def exec(self, argv, *, workdir, timeout_s, env=None) -> ExecResult:
        full_env = dict(os.environ)
        full_env.update(env or {})
        started = time.monotonic()
        try:
            # own process group, so a timeout kills the whole tree (nvcc's children, the repro's)
            proc = subprocess.Popen(argv, cwd=workdir, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            if argv[0] == self.config.compile.nvcc:
                raise NvccMissingError(argv[0], self.where(), hint=NVCC_HOST_HINT) from None
            raise ToolMissingError(argv[0], self.where()) from None
        capture = CappedOutput(self.log_cap_bytes())
        timed_out = False
        try:
            timed_out = not _pump(proc, capture, started + timeout_s)
            if timed_out:
                _kill_group(proc)
                _pump(proc, capture, time.monotonic() + DRAIN_AFTER_KILL_S)  # what it wrote before dying
            proc.stdout.close()
            proc.wait()
        except BaseException:  # interrupted: leave no process behind
            _kill_group(proc)
            proc.wait()
            raise
        return capture.result(argv, exit_code=proc.returncode, seconds=time.monotonic() - started,
                              timed_out=timed_out, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"HostRunner({shlex.quote(self.work_root())})"
