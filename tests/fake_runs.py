"""Real run directories for tests without Docker: the pipeline end to end against test_pipeline's FakeRunner."""
from __future__ import annotations

import gzip
import io
import pathlib
import tarfile

from gpurepro.archive import build_tar
from gpurepro.config import load_config
from gpurepro.render.console import Console
from gpurepro.suites.repro import RunRequest, execute
from projects import make_project
from fake_runner import STEPS, FakeRunner  # noqa: F401 - re-exported for the bundle/report tests

H100 = "NVIDIA H100 80GB HBM3, 9.0, 580.1"


def project_config(tmp_path: pathlib.Path, steps=STEPS):
    project = make_project(tmp_path, steps=steps)
    return load_config(project.config_path, env={})


def make_run(config, runner=None, steps=("hello", "broken"), **request):
    """A finished run directory made by the real pipeline (compile, arch check, classify, record)."""
    return execute(config, RunRequest(steps=list(steps), argv=["invoke", "repro", ",".join(steps)], **request),
                   console=Console(), runner=runner or FakeRunner())


def tar_members(bundle: pathlib.Path) -> dict[str, bytes]:
    """A bundle's regular files, name -> bytes (test side: plain tarfile, the archives here are ours)."""
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def rewrite_bundle(bundle: pathlib.Path, out: pathlib.Path, change) -> pathlib.Path:
    """A copy of `bundle` with its files passed through `change(dict) -> dict` (to tamper with it)."""
    files = change(dict(tar_members(bundle)))
    out.write_bytes(gzip.compress(build_tar(files), mtime=0))
    return out


def raw_tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()
