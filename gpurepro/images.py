"""Images, built offline: a debootstrap base, a host-downloaded wheelhouse, and docker/Dockerfile targets.

Everything goes through the docker SDK. Wheels are pinned with hashes in docker/requirements/*.txt and
downloaded on the host (where pip reaches PyPI) so builds work where containers cannot use pip's TLS.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from .config import Config
from .errors import BadInputError, InfraError, ToolMissingError

REQ_LINE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})")
TARGET_REQUIREMENTS = {"toolchain": ["toolchain.txt", "flashinfer.txt"], "vllm-dev": ["vllm-dev.txt"]}
# Wheels that no index the host reaches may hold (torch's CPU build) are looked up by hash in local directories
# first: GPUREPRO_WHEEL_DIRS (os.pathsep-separated), else /opt/wheels where it exists.
WHEEL_DIRS_ENV = "GPUREPRO_WHEEL_DIRS"
DEFAULT_WHEEL_DIRS = ("/opt/wheels",)
# torch's CPU-only builds (+cpu) are published on PyTorch's own index, not on PyPI. Asked only while a pin with
# that local version label is still missing: an unreachable index costs pip minutes of retries.
LOCAL_LABEL_INDEXES = {"cpu": "https://download.pytorch.org/whl/cpu"}
PIP_PLATFORM_ARGS = ["--only-binary=:all:", "--no-deps", "--implementation", "cp",
                     "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                     "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                     "--platform", "manylinux_2_12_x86_64", "--platform", "manylinux2010_x86_64",
                     "--platform", "any"]


def docker_dir(config: Config) -> pathlib.Path:
    return config.root / "docker"


def pinned_requirements(path: pathlib.Path) -> list[dict]:
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = REQ_LINE_RE.match(line)
        if not match:
            raise BadInputError(f"{path}:{number}: expected 'name==version --hash=sha256:<64 hex>'")
        pins.append(match.groupdict())
    return pins


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def missing_wheels(wheelhouse: pathlib.Path, pins: list[dict]) -> list[dict]:
    have = {sha256_file(p) for p in wheelhouse.glob("*.whl")} if wheelhouse.is_dir() else set()
    return [pin for pin in pins if pin["sha"] not in have]


def local_wheel_dirs(env: dict[str, str] | None = None) -> list[pathlib.Path]:
    env = os.environ if env is None else env
    listed = env.get(WHEEL_DIRS_ENV)
    names = [d for d in listed.split(os.pathsep) if d] if listed else list(DEFAULT_WHEEL_DIRS)
    return [pathlib.Path(d) for d in names if pathlib.Path(d).is_dir()]


def _wheel_prefix(name: str) -> str:
    # wheel file names use the normalized project name with "_" (PEP 427/503)
    return re.sub(r"[-_.]+", "_", name).lower() + "-"


def copy_local_wheels(wheelhouse: pathlib.Path, pins: list[dict], dirs: list[pathlib.Path], *, log=print) -> int:
    """Copy missing pinned wheels found (by hash) in local wheel directories; how many were copied."""
    copied = 0
    for pin in missing_wheels(wheelhouse, pins):
        prefix = _wheel_prefix(pin["name"])
        for directory in dirs:
            found = [p for p in sorted(directory.glob("*.whl")) if p.name.lower().startswith(prefix)
                     and sha256_file(p) == pin["sha"]]
            if found:
                shutil.copyfile(found[0], wheelhouse / found[0].name)
                log(f"using local wheel {found[0]}")
                copied += 1
                break
    return copied


def download_wheels(config: Config, target: str, *, python_version: str = "3.11", log=print) -> pathlib.Path:
    """Fill docker/wheelhouse/<target> with the pinned wheels, verified by hash; idempotent."""
    if target not in TARGET_REQUIREMENTS:
        raise BadInputError(f"unknown image target '{target}'", hint=f"use one of: {', '.join(TARGET_REQUIREMENTS)}")
    wheelhouse = docker_dir(config) / "wheelhouse" / target
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for name in TARGET_REQUIREMENTS[target]:
        req = docker_dir(config) / "requirements" / name
        pins = pinned_requirements(req)
        if not missing_wheels(wheelhouse, pins):
            continue
        dirs = local_wheel_dirs()
        copy_local_wheels(wheelhouse, pins, dirs, log=log)
        if not missing_wheels(wheelhouse, pins):
            continue
        log(f"downloading wheels for {target} from {req.name} ({len(pins)} pinned)")
        # the wheelhouse and local directories as find-links: pip reuses what is there (hash-checked)
        sources = [arg for d in [wheelhouse, *dirs] for arg in ("--find-links", str(d))]
        labels = {pin["version"].partition("+")[2] for pin in missing_wheels(wheelhouse, pins)}
        sources += [arg for label, url in LOCAL_LABEL_INDEXES.items() if label in labels
                    for arg in ("--extra-index-url", url)]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", "-r", str(req),
               "-d", str(wheelhouse), "--python-version", python_version, *PIP_PLATFORM_ARGS, *sources]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise InfraError(f"pip download for {req.name} failed: {last}")
        still = missing_wheels(wheelhouse, pins)
        if still:
            raise InfraError(f"wheelhouse lacks {', '.join(p['name'] for p in still)} after download")
    return wheelhouse


def image_exists(client, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base(client, config: Config, *, suite: str = "bookworm", mirror: str | None = None,
               force: bool = False, log=print) -> str:
    """A minimal Debian image made with debootstrap and imported: for hosts that reach no registry."""
    ref = config.docker.base_image
    if image_exists(client, ref) and not force:
        log(f"{ref} exists (use --force to rebuild)")
        return ref
    if shutil.which("debootstrap") is None:
        raise ToolMissingError("debootstrap", "PATH (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise InfraError("debootstrap needs root", hint="run `sudo invoke image.base`")
    repository, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    with tempfile.TemporaryDirectory(prefix="gpurepro-base-") as tmp:
        rootfs = pathlib.Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", suite, str(rootfs)] + ([mirror] if mirror else [])
        log(f"debootstrap {suite} (a few minutes)")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["debootstrap failed"]
            raise InfraError(f"debootstrap failed: {last[0]}")
        archive = pathlib.Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(rootfs.iterdir()):
                tar.add(entry, arcname=entry.name)
        shutil.rmtree(rootfs, ignore_errors=True)
        log(f"importing {ref}")
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag)
    return ref


def build_image(client, config: Config, target: str = "toolchain", *, log=print) -> str:
    """docker/Dockerfile --target <target>, tagged as configured, streamed through the SDK."""
    if target not in config.docker.images:
        raise BadInputError(f"unknown image target '{target}'",
                            hint=f"targets in gpurepro.yaml: {', '.join(config.docker.images)}")
    base = config.docker.base_image
    if not image_exists(client, base):
        raise InfraError(f"base image {base} not found",
                         hint="make it with `invoke image.base` (or set docker.base_image to a CUDA devel image)")
    targets = ["toolchain"] if target == "toolchain" else ["toolchain", target]
    for needed in targets:
        download_wheels(config, needed, log=log)
    tag = config.docker.images[target]
    log(f"building {tag} (target {target})")
    tail: list[str] = []
    image_id = None
    stream = client.api.build(path=str(docker_dir(config)), target=target, tag=tag, rm=True, forcerm=True,
                              buildargs={"BASE_IMAGE": base}, decode=True)
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("error", "").strip()
            raise InfraError(f"image build failed: {detail[:300]}")
        text = chunk.get("stream", "")
        if text.strip():
            tail = (tail + [text.rstrip()])[-20:]
            if text.startswith("Step "):
                log(text.rstrip())
        aux = chunk.get("aux") or {}
        image_id = aux.get("ID", image_id)
    if not image_exists(client, tag):
        raise InfraError(f"image build produced no {tag}: {' / '.join(tail[-3:])}")
    return tag
