"""Shared fixtures: a throwaway project (config + manifest + tiny CUDA programs), Docker and GPU gates."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# every run.json and result.json a test run writes (in this process or a CLI it starts) is checked against
# docs/schemas/ before it is written: a record that drifts from its schema fails the test that wrote it
os.environ["GPUREPRO_VALIDATE_RECORDS"] = "1"
# commands the tests start run in-process: a warm engine (gpurepro/warm.py) would outlive the test session;
# tests/test_warm.py turns it on for its own commands, with its own runtime directory
os.environ["GPUREPRO_WARM"] = "0"

from projects import ROOT, Project, make_project  # noqa: F401 - re-exported for fixtures


def _has_gpu() -> str | None:
    """None when an NVIDIA GPU answers, else the reason it does not."""
    if shutil.which("nvidia-smi") is None:
        return "no GPU: nvidia-smi not found"
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no GPU: nvidia-smi failed ({exc})"
    return None if done.returncode == 0 and "GPU" in done.stdout else "no GPU: nvidia-smi lists none"


def pytest_collection_modifyitems(config, items):
    reason = _has_gpu()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client():
    docker = pytest.importorskip("docker", reason="docker SDK not installed")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine to test against
        pytest.skip(f"no Docker engine answers: {str(exc).splitlines()[0][:120]}")
    return client


@pytest.fixture(scope="session")
def toolchain_image(docker_client):
    from gpurepro.config import load_config

    image = load_config(ROOT / "gpurepro.yaml").docker.image
    try:
        docker_client.images.get(image)
    except Exception:  # noqa: BLE001
        pytest.skip(f"image {image} not built (`invoke image.base image.build` builds it; .ci/run does)")
    return image


@pytest.fixture
def project_factory(tmp_path, request):
    made: list[Project] = []

    def factory(**kwargs) -> Project:
        project = make_project(tmp_path, **kwargs)
        made.append(project)
        return project

    yield factory
    # a test's containers never outlive it
    try:
        import docker

        client = docker.from_env()
        for project in made:
            try:
                client.containers.get(project.container).remove(force=True)
            except docker.errors.NotFound:
                pass
    except Exception:  # noqa: BLE001 - no engine: nothing was created
        pass
