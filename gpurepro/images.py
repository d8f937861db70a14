"""Images, built offline: a debootstrap base, a host-downloaded wheelhouse, and docker/Dockerfile targets.

Everything goes through the docker SDK. Wheels are pinned with hashes in docker/requirements/*.txt and
downloaded on the host (where pip reaches PyPI) so builds work where containers cannot use pip's TLS.
"""
from __future__ import annotations

import hashlib
import json
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
    """The project's docker/ (Dockerfile, pins, wheelhouse); a configuration kept elsewhere (GPUREPRO_CONFIG, a
    test's project) uses the tool's own, as it does the toolchains file."""
    own = config.root / "docker"
    return own if (own / "Dockerfile").is_file() else pathlib.Path(__file__).resolve().parent.parent / "docker"


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
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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


def pool_dir(config: Config) -> pathlib.Path:
    """Every toolchain's wheels, found by hash (docker/wheelhouse/pool); staged contexts hard-link from here."""
    return docker_dir(config) / "wheelhouse" / "pool"


def _pin_dicts(pins) -> list[dict]:
    return [{"name": p.name, "version": p.version, "sha": p.sha256} for p in pins]


def download_toolchain_wheels(config: Config, toolchain, *, python_version: str = "3.11", log=print) -> pathlib.Path:
    """Fill docker/wheelhouse/pool with a toolchain's pinned wheels (hash-checked); idempotent, offline when present."""
    pool = pool_dir(config)
    pool.mkdir(parents=True, exist_ok=True)
    pins = _pin_dicts(toolchain.all_pins)
    if not missing_wheels(pool, pins):
        return pool
    dirs = [d for d in [docker_dir(config) / "wheelhouse" / "toolchain", *local_wheel_dirs()] if d.is_dir()]
    copy_local_wheels(pool, pins, dirs, log=log)
    still = missing_wheels(pool, pins)
    if not still:
        return pool
    log(f"downloading {len(still)} wheels for toolchain {toolchain.name}")
    with tempfile.TemporaryDirectory(prefix="gpurepro-req-") as tmp:
        req = pathlib.Path(tmp) / "requirements.txt"
        req.write_text("".join(f"{p['name']}=={p['version']} --hash=sha256:{p['sha']}\n" for p in still))
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", "-r", str(req), "-d", str(pool),
               "--python-version", python_version, *PIP_PLATFORM_ARGS, "--find-links", str(pool)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise InfraError(f"pip download for toolchain {toolchain.name} failed: {last}",
                         hint="PyPI unreachable? put the wheels in GPUREPRO_WHEEL_DIRS")
    still = missing_wheels(pool, pins)
    if still:
        raise InfraError(f"wheelhouse lacks {', '.join(p['name'] for p in still)} for toolchain {toolchain.name}")
    return pool


def fetch_cutlass_tree(config: Config, toolchain, *, log=print) -> pathlib.Path | None:
    """A toolchain's CUTLASS git commit, checked out once under docker/wheelhouse/cutlass-git/<commit> (needs network)."""
    if not toolchain.cutlass_git:
        return None
    source = toolchain.cutlass_git
    dest = docker_dir(config) / "wheelhouse" / "cutlass-git" / source["commit"]
    if (dest / "include" / "cutlass" / "version.h").is_file():
        return dest
    if shutil.which("git") is None:
        raise ToolMissingError("git", "PATH (a CUTLASS git source needs it)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    log(f"fetching CUTLASS {source.get('tag') or ''} {source['commit']} from {source['url']}")
    steps = [["git", "init", "-q"], ["git", "fetch", "-q", "--depth", "1", source["url"], source["commit"]],
             ["git", "checkout", "-q", "FETCH_HEAD"], ["git", "rev-parse", "HEAD"]]
    for step in steps:
        done = subprocess.run(step, cwd=dest, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["git failed"])[-1]
            raise InfraError(f"fetching CUTLASS {source['commit']} from {source['url']} failed: {last}")
    if done.stdout.strip() != source["commit"]:
        shutil.rmtree(dest, ignore_errors=True)
        raise InfraError(f"CUTLASS checkout is {done.stdout.strip()}, the toolchain pins {source['commit']}")
    return dest


def _link(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of a GB of wheels per toolchain; Docker hashes contents, not inodes
    except OSError:
        shutil.copyfile(src, dst)


def stage_context(config: Config, toolchain, target: str, *, log=print) -> pathlib.Path:
    """docker/.build/<toolchain>-XXXX: the Dockerfile, its scripts, the toolchain's pins and only its wheels."""
    from .toolchains import find_wheel

    # a fresh directory per build: two builds of one toolchain at once must not share it (the cache keys on contents)
    (docker_dir(config) / ".build").mkdir(parents=True, exist_ok=True)
    dest = pathlib.Path(tempfile.mkdtemp(prefix=f"{toolchain.name}-", dir=docker_dir(config) / ".build"))
    (dest / "toolchain").mkdir(parents=True)
    for name in ("Dockerfile", "layout_cuda.py", "layout_flashinfer.py"):
        _link(docker_dir(config) / name, dest / name)
    pool = [pool_dir(config)]
    (dest / "toolchain" / "cuda.txt").write_text(
        "# generated from ci/toolchains.yaml: the toolchain's CUDA wheels\n"
        + "".join(p.requirement() + "\n" for p in toolchain.cuda_wheels))
    (dest / "toolchain" / "headers.json").write_text(json.dumps(toolchain.headers_spec(), indent=1, sort_keys=True) + "\n")
    for sub, pins in (("cuda", toolchain.cuda_wheels), ("headers", toolchain.header_wheels)):
        (dest / "wheelhouse" / sub).mkdir(parents=True)
        for pin in pins:
            found = find_wheel(pin, pool)
            if found is None:
                raise InfraError(f"no {pin.name}=={pin.version} wheel in {pool[0]}",
                                 hint=f"run `invoke image.wheels --toolchain {toolchain.name}`")
            _link(found, dest / "wheelhouse" / sub / found.name)
    tree = dest / "cutlass-tree"
    tree.mkdir()
    checkout = fetch_cutlass_tree(config, toolchain, log=log)
    if checkout is not None:
        for sub in ("include", "tools/util/include"):
            shutil.copytree(checkout / sub, tree / sub)
    (dest / "requirements").mkdir()
    (dest / "wheelhouse" / "vllm-dev").mkdir()
    _link(docker_dir(config) / "requirements" / "vllm-dev.txt", dest / "requirements" / "vllm-dev.txt")
    if target == "vllm-dev":
        for wheel in sorted(download_wheels(config, "vllm-dev", log=log).glob("*.whl")):
            _link(wheel, dest / "wheelhouse" / "vllm-dev" / wheel.name)
    return dest


def _toolchain(config: Config, toolchain):
    from .toolchains import Toolchain, load_toolchains, toolchains_file

    if isinstance(toolchain, Toolchain):
        return toolchain
    toolchains = load_toolchains(toolchains_file(config))
    return toolchains.default if toolchain is None else toolchains[toolchain]


def build_image(client, config: Config, target: str = "toolchain", *, toolchain=None, tag_latest: bool = True,
                log=print) -> str:
    """docker/Dockerfile --target <target> for one toolchain (default: the default one), streamed through the SDK.

    Tagged <repository>:<toolchain>, and also as configured (:latest) for the default toolchain unless tag_latest
    is False. Returns the toolchain's tag.
    """
    if target not in config.docker.images:
        raise BadInputError(f"unknown image target '{target}'",
                            hint=f"targets in gpurepro.yaml: {', '.join(config.docker.images)}")
    toolchain = _toolchain(config, toolchain)
    base = toolchain.base_image or config.docker.base_image
    if not image_exists(client, base):
        if toolchain.base_image:
            raise InfraError(f"toolchain {toolchain.name} needs base image {base} (its nvcc is not in wheels)",
                             hint="pull it where a registry is reachable, then build again")
        raise InfraError(f"base image {base} not found",
                         hint="make it with `invoke image.base` (or set docker.base_image to a CUDA devel image)")
    download_toolchain_wheels(config, toolchain, log=log)
    context = stage_context(config, toolchain, target, log=log)
    configured = config.docker.images[target]
    tags = toolchain.image_tags(configured)
    if toolchain.default and tag_latest and configured not in tags:
        tags.append(configured)
    if not tag_latest:
        tags = [t for t in tags if t == toolchain.image(configured)]
    tag = tags[0]
    log(f"building {tag} (target {target}, toolchain {toolchain.name})")
    tail: list[str] = []
    try:
        stream = client.api.build(path=str(context), target=target, tag=tag, rm=True, forcerm=True,
                                  buildargs={"BASE_IMAGE": base, "TOOLCHAIN": toolchain.name}, decode=True)
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("error", "").strip()
                raise InfraError(f"image build for toolchain {toolchain.name} failed: {detail[:300]}")
            text = chunk.get("stream", "")
            if text.strip():
                tail = (tail + [text.rstrip()])[-20:]
                if text.startswith("Step "):
                    log(text.rstrip())
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if not image_exists(client, tag):
        raise InfraError(f"image build produced no {tag}: {' / '.join(tail[-3:])}")
    for extra in tags[1:]:
        repo, _, name = extra.rpartition(":")
        client.api.tag(tag, repo, name)
    return tag


def build_toolchain_images(client, config: Config, toolchain, target: str = "vllm-dev", *, tag_latest: bool = True,
                           log=print) -> list[str]:
    """The toolchain image, and the vllm-dev image on top of it when target is vllm-dev; their tags, in that order."""
    targets = ["toolchain"] if target == "toolchain" else ["toolchain", target]
    return [build_image(client, config, t, toolchain=toolchain, tag_latest=tag_latest, log=log) for t in targets]


def layout_headers(config: Config, toolchain, dest: str | os.PathLike | None = None, *, log=print) -> pathlib.Path:
    """Lay out a toolchain's FlashInfer/CUTLASS headers for the host backend; default dest: a directory per toolchain
    beside host.flashinfer (~/.cache/gpurepro/toolchains/<name>). Checked against the declared CUTLASS version."""
    import importlib.util

    toolchain = _toolchain(config, toolchain)
    dest_path = pathlib.Path(dest).expanduser() if dest else \
        pathlib.Path(config.host.flashinfer).expanduser().parent / "toolchains" / toolchain.name
    pool = download_toolchain_wheels(config, toolchain, log=log)
    checkout = fetch_cutlass_tree(config, toolchain, log=log)
    spec = importlib.util.spec_from_file_location("gpurepro_layout_flashinfer", docker_dir(config) / "layout_flashinfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # a fresh tree: files of another release left behind would shadow nothing but would confuse a diff
    shutil.rmtree(dest_path, ignore_errors=True)
    try:
        count = module.layout_toolchain(toolchain.headers_spec(), pool, dest_path, cutlass_tree=checkout)
    except SystemExit as exc:
        raise InfraError(str(exc)) from None
    log(f"laid out {count} headers of toolchain {toolchain.name} (CUTLASS {module.cutlass_version(dest_path)}) "
        f"under {dest_path}")
    return dest_path
