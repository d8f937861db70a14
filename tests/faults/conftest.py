"""Fixtures the fault suite shares."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def own_container(docker_client):
    """make(image) -> a container of the test's own, named like a user's (no gpurepro labels), removed afterwards."""
    made = []

    def make(image: str):
        try:
            docker_client.images.get(image)
        except Exception:  # noqa: BLE001 - any lookup failure means the image is not there to test with
            pytest.skip(f"image {image} not built (`invoke image.base image.build --target toolchain`)")
        container = docker_client.containers.run(image, ["sleep", "infinity"], name=f"h12-faults-{uuid.uuid4().hex[:8]}",
                                                 detach=True, init=True)
        made.append(container)
        return container

    yield make
    for container in made:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
