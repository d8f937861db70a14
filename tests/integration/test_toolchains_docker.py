"""Two real toolchains' images (default and cutlass-4.2) on the real engine: what each carries, and a small compile.

Cheap by design: both share the CUDA layer, so after the first build the second costs only its headers layer, and a
rebuild is all cache. The images are tagged gpurepro/toolchain:<name> only; :latest is left alone.
"""
from __future__ import annotations

import io
import tarfile
import time

import pytest

from gpurepro import images
from gpurepro.config import load_config
from gpurepro.errors import InfraError
from gpurepro.toolchains import load_toolchains, patch_applies

from projects import ROOT

pytestmark = pytest.mark.docker

PROGRAM = b"""#include <cstdio>
#include <cutlass/version.h>
#include <cute/tensor.hpp>
__global__ void k(int *out) { *out = CUTLASS_VERSION; }
int main() { std::printf("cutlass %d.%d.%d\\n", CUTLASS_MAJOR, CUTLASS_MINOR, CUTLASS_PATCH); return 0; }
"""
PATCH = "cutlass-sm120-ptr-array-mxf8f6f4-tags.patch"


@pytest.fixture(scope="module")
def built(docker_client):
    config = load_config(ROOT / "gpurepro.yaml")
    if not images.image_exists(docker_client, config.docker.base_image):
        pytest.skip(f"base image {config.docker.base_image} not built (`invoke image.base`)")
    toolchains = load_toolchains(ROOT / "ci" / "toolchains.yaml")
    chosen = toolchains.select(["default", "cutlass-4.2"])
    for toolchain in chosen:
        try:
            images.download_toolchain_wheels(config, toolchain, log=lambda m: None)
        except InfraError as exc:
            pytest.skip(f"wheels for {toolchain.name} absent and not downloadable: {exc.one_line()}")
    tags, seconds = {}, {}
    for toolchain in chosen:
        start = time.monotonic()
        (tags[toolchain.name],) = images.build_toolchain_images(docker_client, config, toolchain, "toolchain",
                                                                tag_latest=False, log=lambda m: None)
        seconds[toolchain.name] = time.monotonic() - start
    return {t.name: t for t in chosen}, tags, seconds


def run_in(docker_client, image: str, script: str, files: dict[str, bytes] | None = None) -> tuple[int, str]:
    container = docker_client.containers.create(image, ["sleep", "600"], name=f"h15-toolchains-{int(time.time() * 1e6)}")
    try:
        container.start()
        if files:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            container.exec_run(["mkdir", "-p", "/w"])
            container.put_archive("/w", buf.getvalue())
        code, output = container.exec_run(["bash", "-c", script], workdir="/w" if files else "/workspace")
        return code, output.decode(errors="replace")
    finally:
        container.remove(force=True)


def test_each_image_carries_its_toolchain(built, docker_client):
    toolchains, tags, _ = built
    assert tags == {"default": "gpurepro/toolchain:default", "cutlass-4.2": "gpurepro/toolchain:cutlass-4.2"}
    for name, toolchain in toolchains.items():
        assert docker_client.images.get(tags[name]).labels["gpurepro.toolchain"] == name
        code, output = run_in(docker_client, tags[name],
                              "nvcc --version | tail -2 | head -1; cat /workspace/flashinfer/version.txt; "
                              "grep -E 'define CUTLASS_(MAJOR|MINOR|PATCH) ' "
                              "/workspace/flashinfer/3rdparty/cutlass/include/cutlass/version.h")
        assert code == 0, output
        assert f"V{toolchain.nvcc_version}" in output
        assert toolchain.flashinfer_version in output.splitlines()[1]
        major, minor, patch = toolchain.cutlass_version.split(".")
        assert f"CUTLASS_MINOR {minor}" in output and f"CUTLASS_PATCH {patch}" in output


def test_the_second_toolchain_reuses_the_cuda_layer(built, docker_client):
    _, tags, _ = built
    layers = {name: docker_client.images.get(tag).attrs["RootFS"]["Layers"] for name, tag in tags.items()}
    shared = [a for a, b in zip(layers["default"], layers["cutlass-4.2"]) if a == b]
    # base, apt, and the CUDA install (nvcc 13.0.88 in both) are the same layers
    assert len(shared) >= 3
    big = docker_client.api.history(tags["cutlass-4.2"])
    assert any("pip install" in (h.get("CreatedBy") or "") for h in big)


def test_a_small_program_compiles_against_each_toolchain_s_cutlass(built, docker_client):
    toolchains, tags, _ = built
    config = load_config(ROOT / "gpurepro.yaml")
    includes = " ".join(f"-I {d.format(flashinfer='/workspace/flashinfer')}" for d in config.compile.include_dirs)
    for name, toolchain in toolchains.items():
        code, output = run_in(docker_client, tags[name],
                              f"nvcc -std=c++17 -arch=sm_120a {includes} -o v v.cu -L/opt/cuda/lib && ./v",
                              {"v.cu": PROGRAM})
        assert code == 0, output[-2000:]
        assert f"cutlass {toolchain.cutlass_version}" in output


def test_the_declared_patch_applicability_holds_in_the_images(built, docker_client):
    toolchains, tags, _ = built
    patch = (ROOT / "repros" / "patches" / PATCH).read_bytes()
    for name, toolchain in toolchains.items():
        code, output = run_in(docker_client, tags[name],
                              "cp -r /workspace/flashinfer/3rdparty/cutlass c && patch -p1 --dry-run --forward --batch -d c < p",
                              {"p": patch})
        declared = patch_applies(PATCH, toolchain.cutlass_version)
        assert (code == 0) == (declared is True), (name, output[-500:])
        if declared is not True:
            assert declared == f"patch {PATCH} does not apply to CUTLASS {toolchain.cutlass_version} (declared for 4.5.*)"
