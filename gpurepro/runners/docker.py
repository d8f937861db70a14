"""The Docker runner: one thin adapter over the docker SDK (never the docker CLI).

A long-lived named container (vllm-dev) is reused across runs: created if missing, started if stopped,
recreated if the tool made it from an image that has since changed. A container of that name that the
tool did not create (the user's own vllm-dev) is used as it is, never recreated or removed. Files travel
only through the copy API (put_archive/get_archive): the container has no bind mounts and no volumes.
"""
from __future__ import annotations

import shlex
import time

import docker
import docker.errors
from docker.types import DeviceRequest

from ..archive import build_tar, read_tar
from ..classify import ExecResult
from ..config import Config
from ..errors import ContainerError, DockerUnavailableError, ImageMissingError, InfraError
from .base import Runner

LABEL_MANAGED = "gpurepro.managed"
LABEL_IMAGE = "gpurepro.image-id"
KILL_GRACE_S = 5
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

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except docker.errors.DockerException as exc:
            self._remove_if_created()
            raise InfraError(f"docker: {_short(exc)}") from None

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
        except docker.errors.DockerException:
            pass
        return facts

    # --- files and commands -----------------------------------------------------------------------
    def work_root(self) -> str:
        return self.config.docker.workdir

    def flashinfer_root(self) -> str:
        return self.config.docker.flashinfer

    def _require(self):
        if self.container is None:
            raise InfraError("docker runner used before start()")
        return self.container

    def exec(self, argv, *, workdir, timeout_s, env=None) -> ExecResult:
        container = self._require()
        # exec has no timeout of its own: coreutils timeout ends the command inside the container
        # the marker in timeout's own command line lets `cancel` signal it; timeout passes the signal on
        marker = ["env", f"{RUN_MARKER}={self.run_tag}"] if self.run_tag else []
        wrapped = ["timeout", "-k", str(KILL_GRACE_S), str(int(timeout_s)), *marker, *argv]
        started = time.monotonic()
        try:
            code, output = container.exec_run(wrapped, workdir=workdir, environment=env, demux=False)
        except docker.errors.DockerException as exc:
            raise ContainerError(self.container_name, shlex.join(argv), _short(exc)) from None
        seconds = time.monotonic() - started
        timed_out = code in (124, 137) and seconds >= timeout_s - 1
        text = (output or b"").decode("utf-8", errors="replace")
        if code in (126, 127) and "timeout: failed to run command" in text:
            # the command itself could not start: say so rather than blame the repro
            raise ContainerError(self.container_name, shlex.join(argv), text.strip()[:200])
        return ExecResult(argv=list(argv), exit_code=code, output=text, seconds=seconds,
                          timed_out=timed_out, timeout_s=timeout_s)

    def put_files(self, dest, files, *, executable=frozenset()) -> None:
        container = self._require()
        self._mkdir(dest)
        try:
            ok = container.put_archive(dest, build_tar(files, executable=executable))
        except docker.errors.DockerException as exc:
            raise ContainerError(self.container_name, f"put_archive {dest}", _short(exc)) from None
        if not ok:
            raise ContainerError(self.container_name, f"put_archive {dest}", "copy into the container failed")

    def _mkdir(self, path: str) -> None:
        result = self.exec(["mkdir", "-p", path], workdir="/", timeout_s=60)
        if result.exit_code != 0:
            raise ContainerError(self.container_name, f"mkdir -p {path}", result.output.strip()[:200])

    def get_files(self, path) -> dict[str, bytes]:
        container = self._require()
        try:
            stream, _stat = container.get_archive(path)
            data = b"".join(stream)
        except docker.errors.NotFound:
            return {}
        except docker.errors.DockerException as exc:
            raise ContainerError(self.container_name, f"get_archive {path}", _short(exc)) from None
        return read_tar(data)

    def cancel(self, path) -> None:
        if self.container is None or not self.run_tag:
            return
        tag = self.run_tag
        self.run_tag = ""  # the cleanup itself must not match
        self.exec(["sh", "-c", f"pkill -TERM -f '{RUN_MARKER}={tag}' || true"], workdir="/", timeout_s=30)
        self.remove_dir(path)

    def remove_dir(self, path) -> None:
        if self.container is not None and path.startswith(self.work_root().rstrip("/") + "/"):
            self.exec(["rm", "-rf", path], workdir="/", timeout_s=120)
