"""The Docker runner: one thin adapter over the docker SDK (never the docker CLI).

A long-lived named container (vllm-dev) is reused across runs: created if missing, started if stopped,
recreated if the tool made it from an image that has since changed. A container of that name that the
tool did not create (the user's own vllm-dev) is used as it is, never recreated or removed. Files travel
only through the copy API (put_archive/get_archive): the container has no bind mounts and no volumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shlex
import threading
import time

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.types import DeviceRequest

from ..archive import build_tar, read_tar
from ..classify import ExecResult
from ..config import Config
from ..errors import (ContainerError, ContainerStoppedError, DaemonGoneError, DockerUnavailableError, ImageMissingError,
                      InfraError, NvccMissingError, ToolMissingError)
from ..run.directory import atomic_write
from ..run.lock import ContainerLock
from .base import Batch, CappedOutput, Runner, short_command
from .batch import BatchFrames, batch_script

LABEL_MANAGED = "gpurepro.managed"
LABEL_IMAGE = "gpurepro.image-id"
KILL_GRACE_S = 5
SETTLE_S = 3  # how long a container that killed its exec may take to show as exited
COLLECT_S = 300  # the limit a batch adds for packing up the directory it collects
RUN_MARKER = "GPUREPRO_RUN"


def connect(base_url: str | None = None, timeout: int = 120) -> docker.DockerClient:
    """A client for DOCKER_HOST (or base_url); DockerUnavailableError in one line if nothing answers."""
    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(_short(exc)) from None
    except Exception as exc:  # requests/urllib3 errors surface raw from some transports
        raise DockerUnavailableError(_short(exc)) from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# How a daemon that died or hangs shows through the SDK: transport errors, not DockerException
DAEMON_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)
# "env: 'nvcc': No such file or directory" (through the run marker) or timeout's own message
NOT_FOUND_RE = re.compile(r"^(?:env: |timeout: failed to run command )['\u2018](?P<cmd>[^'\u2019]+)['\u2019]: "
                          r"No such file or directory\s*$")  # coreutils quotes ‘so’ in a UTF-8 locale


def _transport_detail(exc: BaseException) -> str:
    """The innermost reason ("Connection refused"), not the nested repr of requests' wrappers."""
    seen = exc
    for _ in range(6):
        inner = seen.args[0] if getattr(seen, "args", None) and isinstance(seen.args[0], BaseException) else None
        inner = inner or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException):
            break
        seen = inner
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    text = _short(seen)
    return re.sub(r"^<[^>]*>:\s*", "", text) or type(seen).__name__


def daemon_endpoint(client) -> str:
    """unix:///var/run/docker.sock or tcp://host:port: the daemon as the user configured it."""
    api = getattr(client, "api", client)
    for adapter in getattr(api, "adapters", {}).values():
        path = getattr(adapter, "socket_path", None)
        if path:
            return f"unix://{path}"
    base = getattr(api, "base_url", "") or ""
    if base.startswith(("http://", "https://")):
        return "tcp://" + base.split("://", 1)[1]
    return os.environ.get("DOCKER_HOST") or base or "the Docker daemon"


class DockerRunner(Runner):
    name = "docker"

    def __init__(self, client: docker.DockerClient, config: Config, *, container_name: str | None = None,
                 image: str | None = None, log=lambda message: None):
        self.client = client
        self.config = config
        self.container_name = container_name or config.docker.container
        self.image_ref = image or config.docker.image
        self.log = log
        self.container = None
        self.created = False  # this command created it (so a failed start removes it)
        self.image = None
        self.fatal: InfraError | None = None  # set once the container or daemon is gone mid-run
        self.users: ContainerLock | None = None  # runs sharing this container (docs/contracts.md, Faults)
        # directories under the work root this runner wrote to or ran in (and has not removed): the end of a run
        # removes its directory only if something of it is left there
        self.touched: set[str] = set()
        self._touched_lock = threading.Lock()  # steps run in a pool: execs add while a cancel reads

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.users is None:
            self.users = ContainerLock(f"{daemon_endpoint(self.client)} {self.container_name}")
        try:
            with self.users.starting():  # one run starts or creates it at a time; then shared until close()
                self._start()
        except docker.errors.DockerException as exc:
            self._remove_if_created()
            raise InfraError(f"docker: {_short(exc)}") from None
        except DAEMON_ERRORS as exc:
            raise self._gone(exc, "container start") from None

    def _start(self) -> None:
        existing = self._find(self.container_name)
        if existing is not None and existing.labels.get(LABEL_MANAGED) != "true":
            self.log(f"using existing container {self.container_name} (not created by gpurepro; left as it is)")
            if existing.status != "running":
                existing.start()
                existing.reload()
            self.container = existing
            self.image = existing.image
            return
        image = self._image()
        if existing is not None and existing.labels.get(LABEL_IMAGE) != image.id:
            self.users.wait_alone(self.log, "recreating it: its image changed")  # never under a running run
            self.log(f"recreating container {self.container_name}: its image changed")
            existing.remove(force=True)
            existing = None
        if existing is None:
            self.container = self._create(image)
            self.created = True
            self.log(f"created container {self.container_name} from {self.image_ref}")
        else:
            if existing.status != "running":
                self.log(f"starting stopped container {self.container_name}")
                existing.start()
                existing.reload()
            self.container = existing
        self.image = image
        if self.container.status != "running":
            raise InfraError(f"container {self.container_name} is {self.container.status}, not running")

    def close(self) -> None:
        if self.users is not None:
            self.users.release()

    def _find(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _image(self):
        try:
            return self.client.images.get(self.image_ref)
        except docker.errors.ImageNotFound:
            raise ImageMissingError(self.image_ref) from None

    def wants_gpus(self) -> bool:
        setting = self.config.docker.gpus
        if setting != "auto":
            return setting == "all"
        runtimes = self.client.info().get("Runtimes") or {}
        return "nvidia" in runtimes

    def _create(self, image):
        kwargs = dict(
            image=image.id,
            command=["sleep", "infinity"],
            name=self.container_name,
            detach=True,
            init=True,
            labels={LABEL_MANAGED: "true", LABEL_IMAGE: image.id, "gpurepro.image-ref": self.image_ref},
            working_dir="/workspace",
            privileged=False,
        )
        if self.wants_gpus():
            kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu", "compute", "utility"]])]
        container = None
        try:
            container = self.client.containers.create(**kwargs)
            container.start()
            container.reload()
        except docker.errors.DockerException:
            if container is not None:
                container.remove(force=True)
            raise
        return container

    def _remove_if_created(self) -> None:
        if self.created and self.container is not None:
            try:
                self.container.remove(force=True)
            except docker.errors.DockerException:
                pass
            self.container = None

    def describe(self) -> dict[str, str]:
        facts = {"container": self.container_name}
        if self.container is not None:
            facts["container_id"] = self.container.id[:12]
            facts["container_managed"] = str(self.container.labels.get(LABEL_MANAGED) == "true").lower()
        if self.image is not None:
            facts["image"] = self.image_ref
            facts["image_id"] = self.image.id
            digests = self.image.attrs.get("RepoDigests") or []
            facts["image_digest"] = digests[0] if digests else ""
        try:
            facts["docker_server"] = self.client.version().get("Version", "")
        except (docker.errors.DockerException, *DAEMON_ERRORS):
            pass
        return facts

    # --- the probe, remembered per container start ----------------------------------------------------
    def probe_text(self, script: str) -> str:
        """The probe's output; for a container this tool created, remembered until the container is started
        again or recreated. Such a container only ever changes under the run directories (its toolchain is its
        image's), so the same start answers the same; a container the user made is probed every run."""
        path, key = self._probe_memo(script)
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                memo = json.loads(path.read_text())
                if memo.get("key") == key and isinstance(memo.get("output"), str):
                    return memo["output"]
        output = super().probe_text(script)
        if path is not None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps({"key": key, "container": self.container_name, "output": output}))
        return output

    def _probe_memo(self, script: str):
        """(file, key) of the probe's memo, or (None, None) when this container's probe is not remembered."""
        container, cache = self.container, getattr(self.config, "cache", None)
        if container is None or cache is None or not cache.enabled or container.labels.get(LABEL_MANAGED) != "true":
            return None, None
        started = (container.attrs.get("State") or {}).get("StartedAt")
        if not started:
            return None, None
        endpoint = daemon_endpoint(self.client)
        key = hashlib.sha256(json.dumps([endpoint, container.id, started, container.labels.get(LABEL_IMAGE),
                                         script]).encode()).hexdigest()
        name = hashlib.sha256(f"{endpoint} {self.container_name}".encode()).hexdigest()[:32]
        return pathlib.Path(cache.dir) / "probes" / f"{name}.json", key

    # --- files and commands -----------------------------------------------------------------------
    def work_root(self) -> str:
        return self.config.docker.workdir

    def flashinfer_root(self) -> str:
        return self.config.docker.flashinfer

    def _require(self):
        if self.fatal is not None:
            raise self.fatal  # the container or daemon is gone: every later command would fail the same way
        if self.container is None:
            raise InfraError("docker runner used before start()")
        return self.container

    def where(self) -> str:
        image = self.image_ref
        if self.image is not None and self.container is not None and self.container.labels.get(LABEL_MANAGED) != "true":
            image = (self.image.tags or [self.image.short_id])[0]
        return f"container {self.container_name} (image {image})"

    def _gone(self, exc: BaseException, during: str | None) -> DaemonGoneError:
        self.fatal = DaemonGoneError(daemon_endpoint(self.client), _transport_detail(exc), during=during)
        return self.fatal

    @contextlib.contextmanager
    def _api(self, during: str, *, missing_ok: bool = False):
        """Docker API calls: API errors name the container, a vanished daemon names the daemon."""
        try:
            yield
        except docker.errors.NotFound:
            if missing_ok:  # the caller expects it (a path that is not there)
                raise
            stopped = self._stopped(during)
            if stopped is not None:
                raise stopped from None
            raise
        except docker.errors.DockerException as exc:
            stopped = self._stopped(during)
            if stopped is not None:
                raise stopped from None
            raise ContainerError(self.container_name, during, _short(exc)) from None
        except DAEMON_ERRORS as exc:
            raise self._gone(exc, during) from None

    def _stopped(self, during: str, settle_s: float = 0.0) -> ContainerStoppedError | None:
        """The container's state after a command went wrong: an error if it no longer runs.

        `docker kill` ends the exec's stream before the daemon marks the container exited, so after an
        ending that looks like a kill (137, -1, a cut stream) the state is polled for `settle_s`."""
        deadline = time.monotonic() + settle_s
        try:
            while True:
                self.container.reload()
                state = self.container.attrs.get("State") or {}
                if self.container.status != "running":
                    break
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
            detail = f"{self.container.status} (exit {state.get('ExitCode')}" + (", OOM killed" if state.get("OOMKilled") else "") + ")"
        except docker.errors.NotFound:
            detail = "removed"
        except docker.errors.DockerException as exc:
            detail = _short(exc)
        except DAEMON_ERRORS as exc:
            return self._gone(exc, during)
        self.fatal = ContainerStoppedError(self.container_name, during, detail)
        return self.fatal

    def _touch(self, path: str) -> None:
        if path.startswith(self.work_root().rstrip("/") + "/"):
            with self._touched_lock:
                self.touched.add(path.rstrip("/"))

    def _forget(self, path: str) -> None:
        path = path.rstrip("/")
        with self._touched_lock:
            self.touched = {t for t in self.touched if t != path and not t.startswith(path + "/")}

    def _left_under(self, path: str) -> bool:
        with self._touched_lock:
            return any(t == path or t.startswith(path + "/") for t in self.touched)

    def exec(self, argv, *, workdir, timeout_s, env=None) -> ExecResult:
        self._touch(workdir)
        capture = CappedOutput(self.log_cap_bytes())
        code, seconds = self._exec_streamed(argv, workdir=workdir, timeout_s=timeout_s, env=env, sink=capture.feed)
        timed_out = code in (124, 137) and seconds >= timeout_s - 1
        result = capture.result(argv, exit_code=code, seconds=seconds, timed_out=timed_out, timeout_s=timeout_s)
        if code in (126, 127) and capture.total < 1024:
            self._raise_if_not_started(argv, short_command(argv), result.output)
        return result

    def exec_many(self, commands, *, collect=None, drop=frozenset()) -> Batch:
        """One exec for the whole batch: a script runs each command under its own `timeout` (and the run
        marker, so `cancel` finds it), then writes a frame header and the command's output to the stream;
        each frame is capped here as `exec` caps one command's output (see gpurepro/runners/batch.py). With
        `collect`, the same exec streams that directory back as a tar and removes it."""
        commands = list(commands)
        if collect is None and len(commands) <= 1:
            return super().exec_many(commands)
        frames = BatchFrames(len(commands), self.log_cap_bytes(), collect=collect is not None)
        script = batch_script(commands, self.run_tag, collect=collect, drop=sorted(drop))
        total_s = sum(c.timeout_s + KILL_GRACE_S + 5 for c in commands) + (COLLECT_S if collect else 0)
        first = short_command(list(commands[0].argv), 40) if commands else "collect"
        label = f"{len(commands)} commands ({first}, ...)"
        code, _seconds = self._exec_streamed(["bash", "-c", script, "gpurepro-batch"], workdir="/",
                                             timeout_s=total_s, env=None, sink=frames.feed, label=label)
        results = frames.results(commands)
        if code != 0 or results is None:
            raise ContainerError(self.container_name, label,
                                 f"batch ended with exit {code} after {frames.complete} of {len(commands)} commands"
                                 + (f": {frames.problem}" if frames.problem else ""))
        for command, result in zip(commands, results):
            if result.exit_code in (126, 127) and result.output_bytes < 1024:
                self._raise_if_not_started(list(command.argv), short_command(list(command.argv)), result.output)
        files = None
        if collect is not None:
            if frames.collect_code != 0:
                raise ContainerError(self.container_name, f"tar of {collect}", f"exit {frames.collect_code}")
            files = read_tar(bytes(frames.collected), strip_top=False)
            self._forget(collect)  # the script removed it (and the run's directory, if nothing else was there)
        return Batch(results, files)

    def _exec_streamed(self, argv, *, workdir, timeout_s, env, sink, label: str | None = None) -> tuple[int, float]:
        """Run argv in the container under coreutils timeout, feeding its output to `sink`; (exit code, seconds).
        Raises when the container or the daemon fails, not when the command does."""
        container = self._require()
        # exec has no timeout of its own: coreutils timeout ends the command inside the container
        # the marker in timeout's own command line lets `cancel` signal it; timeout passes the signal on
        marker = ["env", f"{RUN_MARKER}={self.run_tag}"] if self.run_tag else []
        wrapped = ["timeout", "-k", str(KILL_GRACE_S), str(int(timeout_s)), *marker, *argv]
        command = label or short_command(argv)
        api = self.client.api
        started = time.monotonic()
        with self._api(command):
            exec_id = api.exec_create(container.id, wrapped, workdir=workdir, environment=env)["Id"]
            # streamed, not collected: a program printing a gigabyte must not make the tool hold it
            stream = api.exec_start(exec_id, stream=True, demux=False)
        broken = None
        try:
            for chunk in stream:
                sink(chunk)
        except DAEMON_ERRORS as exc:  # the connection broke: the daemon or the container went away
            broken = exc
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        seconds = time.monotonic() - started
        with self._api(command):
            info = api.exec_inspect(exec_id)
        code = info.get("ExitCode")
        if broken is not None or info.get("Running") or code is None or code != 0:
            # a killed container ends its execs with 137, -1 or a cut stream: not the command's fault
            own_timeout = code in (124, 137) and seconds >= timeout_s - 1  # coreutils timeout's own kill
            killed_like = broken is not None or info.get("Running") or (code in (None, -1, 137) and not own_timeout)
            stopped = self._stopped(command, SETTLE_S if killed_like else 0.0)
            if stopped is not None:
                raise stopped
            if broken is not None or info.get("Running") or code is None:
                detail = _transport_detail(broken) if broken is not None else "exec ended without an exit code"
                raise ContainerError(self.container_name, command, f"output stream broke: {detail}")
        return code, seconds

    def _raise_if_not_started(self, argv, command: str, text: str) -> None:
        """The command itself could not start: say so rather than blame the repro."""
        match = NOT_FOUND_RE.match(text.strip())
        if match and match.group("cmd") == argv[0]:
            if argv[0] == self.config.compile.nvcc or argv[0].rsplit("/", 1)[-1] == "nvcc":
                raise NvccMissingError(argv[0], self.where())
            raise ToolMissingError(argv[0], self.where())
        if "timeout: failed to run command" in text:
            raise ContainerError(self.container_name, command, text.strip()[:200])

    def put_files(self, dest, files, *, executable=frozenset()) -> None:
        container = self._require()
        # one put_archive at / with the whole path in each name: the engine makes the missing directories
        # while it unpacks, so no `mkdir -p` exec (a process spawn in the container) comes first
        self._touch(dest)
        with self._api(f"put_archive {dest}"):
            ok = container.put_archive("/", build_tar(files, executable=executable, prefix=dest))
        if not ok:
            raise ContainerError(self.container_name, f"put_archive {dest}", "copy into the container failed")

    def get_files(self, path) -> dict[str, bytes]:
        container = self._require()
        try:
            with self._api(f"get_archive {path}", missing_ok=True):
                stream, _stat = container.get_archive(path)
                data = b"".join(stream)
        except docker.errors.NotFound:
            return {}
        return read_tar(data)

    def read_file(self, path) -> bytes | None:
        found = self.get_files(path)  # get_archive of a file: a tar of that one file, under its own name
        return found.get(path.rstrip("/").rsplit("/", 1)[-1])

    def cancel(self, path) -> None:
        if self.container is None or not self.run_tag or self.fatal is not None:
            return
        tag = self.run_tag
        self.run_tag = ""  # the cleanup itself must not match
        self.exec(["sh", "-c", f"pkill -TERM -f '{RUN_MARKER}={tag}' || true"], workdir="/", timeout_s=30)
        self.remove_dir(path)

    def remove_dir(self, path) -> None:
        if self.fatal is not None:
            return  # nothing to clean in a stopped container or through a dead daemon
        if self.container is None or not path.startswith(self.work_root().rstrip("/") + "/"):
            return
        path = path.rstrip("/")
        if not self._left_under(path):
            return  # nothing of it is there (never written, or a batch removed what it collected): no exec
        self.exec(["rm", "-rf", path], workdir="/", timeout_s=120)
        self._forget(path)
