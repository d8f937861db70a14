"""The host runner: a fresh work directory and subprocesses. How GPU machines without Docker run steps."""
from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import time

from ..archive import _safe_relpath
from ..classify import ExecResult
from ..config import Config
from ..errors import InfraError, ToolMissingError
from .base import Runner


class HostRunner(Runner):
    name = "host"

    def __init__(self, config: Config, *, log=lambda message: None):
        self.config = config
        self.log = log

    def make_work_root(self) -> None:
        root = pathlib.Path(self.work_root())
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InfraError(f"cannot create host work directory {root}: {exc.strerror}") from None

    def start(self) -> None:
        self.make_work_root()
        if shutil.which(self.config.compile.nvcc) is None:
            raise ToolMissingError(self.config.compile.nvcc, "PATH on this host")
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

    def remove_dir(self, path) -> None:
        root = pathlib.Path(self.work_root()).resolve()
        target = pathlib.Path(path).resolve()
        if root in target.parents:
            shutil.rmtree(target, ignore_errors=True)

    def exec(self, argv, *, workdir, timeout_s, env=None) -> ExecResult:
        full_env = dict(os.environ)
        full_env.update(env or {})
        started = time.monotonic()
        try:
            # own process group, so a timeout kills the whole tree (nvcc's children, the repro's)
            proc = subprocess.Popen(argv, cwd=workdir, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise ToolMissingError(argv[0], "PATH on this host") from None
        try:
            output, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            timed_out = True
        except BaseException:  # interrupted: leave no process behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return ExecResult(argv=list(argv), exit_code=proc.returncode, output=output.decode("utf-8", errors="replace"),
                          seconds=time.monotonic() - started, timed_out=timed_out, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"HostRunner({shlex.quote(self.work_root())})"
