"""Runners: where steps compile and run. `make_runner` is the only place one is chosen."""
from __future__ import annotations

from ..config import Config
from ..errors import DockerUnavailableError, UsageError
from .base import Facts, GpuInfo, Runner
from .host import HostRunner

BACKENDS = ("auto", "docker", "host")
PURPOSES = ("repro", "kernels")


def make_runner(config: Config, backend: str = "auto", *, log=print, purpose: str = "repro",
                endpoint: str | None = None) -> Runner:
    """docker when a daemon answers (at `endpoint`, else DOCKER_HOST or the default socket), else the host.

    `purpose` says what the runner must have: a repro needs nvcc and the CUTLASS headers; the kernel tests
    need only Python.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown runner purpose {purpose!r}")
    host = lambda: HostRunner(config, log=log, require_toolchain=purpose == "repro")  # noqa: E731
    if backend == "host":
        return host()
    from .docker import DockerRunner, connect  # the SDK is only needed on this path

    try:
        client = connect(endpoint)
    except DockerUnavailableError as exc:
        if backend == "docker":
            raise
        log(f"backend: host (no Docker daemon answered: {exc.detail})")
        return host()
    if backend == "auto":
        log("backend: docker")
    return DockerRunner(client, config, log=log)


__all__ = ["BACKENDS", "Facts", "GpuInfo", "HostRunner", "Runner", "make_runner"]
