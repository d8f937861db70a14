"""Runners: where steps compile and run. `make_runner` picks one (docker when a daemon answers, else host)."""
from __future__ import annotations

from ..config import Config
from ..errors import DockerUnavailableError, UsageError
from .base import Facts, GpuInfo, Runner
from .host import HostRunner

BACKENDS = ("auto", "docker", "host")


def make_runner(config: Config, backend: str = "auto", *, log=print) -> Runner:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
    if backend == "host":
        return HostRunner(config, log=log)
    from .docker import DockerRunner, connect  # the SDK is only needed on this path

    try:
        client = connect()
    except DockerUnavailableError as exc:
        if backend == "docker":
            raise
        log(f"backend: host (no Docker daemon answered: {exc.detail})")
        return HostRunner(config, log=log)
    if backend == "auto":
        log("backend: docker")
    return DockerRunner(client, config, log=log)


__all__ = ["BACKENDS", "Facts", "GpuInfo", "HostRunner", "Runner", "make_runner"]
