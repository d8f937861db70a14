"""The warm engine: a resident process that has imported the engine once and forks a child per command.

A command on a cache hit does about 0.2 s of work in the container, but a Python front end first spends about
0.3 s starting the interpreter and importing invoke, the docker SDK, jsonschema, rich and detect-secrets. In a
terminal, the first command starts this server in the background (and runs itself as usual); later commands
hand their task to it over a Unix socket: the task's name and parsed options, the command line, working
directory and environment, and the terminal itself (stdin, stdout and stderr passed as file descriptors). The
server forks; the child takes those over and runs the same task body the command would have run, so output,
progress, files and exit codes are the ones of an ordinary run. Ctrl-C and SIGTERM are forwarded to the child.

- On where stdin is a terminal and $CI is unset; GPUREPRO_WARM=1 forces it on, 0 off.
- One server per code identity (the interpreter, PYTHONPATH, where gpurepro is and every one of its source
  files' size and mtime): an edit to the engine starts a new server; the old one leaves after IDLE_S seconds
  without a command. The server imports the very gpurepro the client imported (its parent directory first on
  its path).
- The socket lives in a directory only the user can enter ($XDG_RUNTIME_DIR/gpurepro, else
  /tmp/gpurepro-<uid>); on Linux the server also checks the peer's uid.
- Anything unexpected on the client's side (no server, a server that hangs up) runs the task in-process.
- `<socket>.log` has a line per command served; `python -m gpurepro.warm stop` stops this user's servers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import select
import signal
import socket
import struct
import subprocess
import sys
import time

WARM_ENV = "GPUREPRO_WARM"
IDLE_S = 900
CONNECT_TIMEOUT_S = 2.0
MAX_REQUEST_BYTES = 4 << 20
PACKAGE = pathlib.Path(__file__).resolve().parent


def enabled(env=None) -> bool:
    env = os.environ if env is None else env
    setting = env.get(WARM_ENV, "")
    if setting in ("0", "1"):
        return setting == "1"
    try:
        interactive = os.isatty(0)
    except OSError:
        interactive = False
    return interactive and not env.get("CI") and hasattr(socket, "send_fds") and hasattr(os, "fork")


def identity() -> str:
    """What the server's code and import path are: a server answers only clients that would run the same code."""
    digest = hashlib.sha256()
    digest.update(json.dumps([sys.executable, sys.version, str(PACKAGE), os.environ.get("PYTHONPATH", "")]).encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        with contextlib.suppress(OSError):
            st = path.stat()
            digest.update(f"{path.relative_to(PACKAGE)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def runtime_dir() -> pathlib.Path | None:
    """A directory only this user can enter, or None (then no warm engine)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = pathlib.Path(base) / "gpurepro" if base else pathlib.Path(f"/tmp/gpurepro-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        return None
    return path


def socket_path(ident: str | None = None) -> pathlib.Path | None:
    directory = runtime_dir()
    return directory / f"{ident or identity()}.sock" if directory else None


# --- client --------------------------------------------------------------------------------------------------
def run_remote(task: str, args: list, kwargs: dict) -> tuple[int, str] | None:
    """(exit code, message) of `task` run by the warm engine, or None: none answered (the caller runs the task
    itself; a server is started for the next command)."""
    path = socket_path()
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        start_server(path)
        return None
    with conn:
        request = {"task": task, "args": args, "kwargs": kwargs, "argv": sys.argv, "cwd": os.getcwd(),
                   "env": dict(os.environ)}
        data = json.dumps(request).encode()
        try:
            conn.settimeout(None)
            socket.send_fds(conn, [struct.pack("!I", len(data)) + data], [0, 1, 2])
            reader = conn.makefile("rb")
            hello = _read_message(reader)
        except (OSError, ValueError):
            return None  # nothing ran yet: run it here
        pid = hello.get("pid") if isinstance(hello, dict) else None
        if not isinstance(pid, int):
            return None
        forwarded = {}

        def forward(signum, _frame):
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # ignored here (a background job, nohup): the command in-process would ignore it too
            forwarded[signum] = signal.signal(signum, forward)
        try:
            while True:
                try:
                    done = _read_message(reader)
                    break
                except InterruptedError:
                    continue
        except (OSError, ValueError):
            # the child died without an answer (killed from outside): its run directory says what it did
            return 3, f"gpurepro: the warm engine's process {pid} ended without a result (unset {WARM_ENV} or " \
                      f"set {WARM_ENV}=0 to run in-process)"
        finally:
            for signum, handler in forwarded.items():
                signal.signal(signum, handler)
        return int(done.get("code", 3)), str(done.get("message") or "")


def start_server(path: pathlib.Path) -> None:
    """The server for this code, in the background, detached from the terminal (best effort)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE.parent), env.get("PYTHONPATH")]))
    with contextlib.suppress(OSError):
        subprocess.Popen([sys.executable, "-P", "-m", "gpurepro.warm", "serve", str(path)], cwd="/", env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)


def _read_message(reader) -> dict:
    header = reader.read(4)
    if len(header) != 4:
        raise ValueError("connection closed")
    (size,) = struct.unpack("!I", header)
    if size > MAX_REQUEST_BYTES:
        raise ValueError("message too large")
    body = reader.read(size)
    if len(body) != size:
        raise ValueError("connection closed")
    return json.loads(body)


def _send_message(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


# --- server --------------------------------------------------------------------------------------------------
def preload() -> None:
    """Everything a command imports or loads once, so that a forked child starts with it."""
    from . import app, commands  # noqa: F401 - imported for the children
    from .redaction import _load_detectors
    from .render import html, junit, markdown  # noqa: F401
    from .runners import docker  # noqa: F401
    from .suites import kernels, repro  # noqa: F401
    from .validate import load_schema

    _load_detectors()
    for name in ("config", "manifest", "run", "result"):
        with contextlib.suppress(Exception):
            load_schema(name)


def serve(path: pathlib.Path, idle_s: float = IDLE_S) -> int:
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return 0  # another server answers on this path already
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        probe.close()
    old_umask = os.umask(0o077)
    try:
        listener.bind(str(path))
    except OSError:
        return 0  # a server started at the same moment won the path
    finally:
        os.umask(old_umask)
    listener.listen(16)
    pidfile, log_path = path.with_suffix(".pid"), path.with_suffix(".log")
    server_pid = os.getpid()
    pidfile.write_text(f"{os.getpid()}\n")
    log_path.write_text("")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `stop`: leave through the clean-up below
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal that started it is not its owner
    try:
        while True:
            try:
                ready, _, _ = select.select([listener], [], [], idle_s)
            except InterruptedError:
                continue
            if not ready:
                return 0  # idle: leave
            try:
                conn, _ = listener.accept()
            except InterruptedError:
                continue
            if not _same_user(conn):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                os._exit(_child(conn, log_path))
            conn.close()
    finally:
        if os.getpid() == server_pid:  # not in a forked child on its way out
            with contextlib.suppress(OSError):
                path.unlink()
            for leftover in (pidfile, log_path):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            listener.close()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _same_user(conn: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the socket's directory admits only this user
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _child(conn: socket.socket, log_path: pathlib.Path) -> int:
    """Take over the client's terminal, directory and environment; run the task; answer with its end."""
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # the descriptors come with the first bytes sent: read those with recv_fds, the rest as it comes
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        if len(fds) != 3 or len(data) < 4:
            return 2
        (size,) = struct.unpack("!I", data[:4])
        if size > MAX_REQUEST_BYTES:
            return 2
        while len(data) < 4 + size:
            more = conn.recv(min(1 << 20, 4 + size - len(data)))
            if not more:
                return 2
            data += more
        request = json.loads(data[4:4 + size])
    except (OSError, ValueError, struct.error):
        return 2
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    _fresh_std_streams()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    os.setsid()  # off the server's session: the client forwards the signals that concern it
    try:
        _send_message(conn, {"pid": os.getpid()})
    except OSError:
        return 2
    code, message = 3, ""
    started = time.monotonic()
    try:
        from .invoke_support import run_task

        code, message = run_task(request["task"], request["args"], request["kwargs"])
    except BaseException as exc:  # noqa: BLE001 - the client must get an answer whatever happened here
        message = f"gpurepro: internal error in the warm engine: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    with contextlib.suppress(OSError):
        _send_message(conn, {"code": code, "message": message})
    with contextlib.suppress(OSError), open(log_path, "a") as log:  # what the engine served, one line each
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} task={request['task']} "
                  f"exit={code} seconds={time.monotonic() - started:.3f} cwd={request['cwd']}\n")
    return 0


def _fresh_std_streams() -> None:
    """stdin/stdout/stderr over the client's descriptors, buffered the way Python buffers them at start-up."""
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"
    sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding, errors="backslashreplace",
                      closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        return serve(pathlib.Path(argv[1]))
    if argv == ["stop"]:
        return stop()
    print("usage: python -m gpurepro.warm serve SOCKET | stop", file=sys.stderr)
    return 2


def stop(directory: pathlib.Path | None = None) -> int:
    """Stop every warm engine of this user (they leave on their own after IDLE_S idle seconds anyway)."""
    directory = directory or runtime_dir()
    for pidfile in sorted(directory.glob("*.pid")) if directory else []:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if _is_server(pid):  # a pid left by a killed server may belong to another process by now
                os.kill(pid, signal.SIGTERM)
            else:
                pidfile.unlink()
    return 0


def _is_server(pid: int) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not pathlib.Path("/proc/self").exists() and _alive(pid)  # no /proc (macOS): trust the pidfile
    return b"gpurepro.warm" in cmdline and b"serve" in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
