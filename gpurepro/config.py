"""The tool's configuration: one YAML file at the project root (gpurepro.yaml), validated strictly.

A bad file is reported as one line naming the file, the key and what is wrong (ConfigError, exit 2).
Environment variables override the few values that differ per machine (documented in the README).
"""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError

CONFIG_NAME = "gpurepro.yaml"
ARCH_RE = re.compile(r"^sm_\d{2,3}[af]?$")


@dataclass(frozen=True)
class DockerConfig:
    container: str
    image: str
    base_image: str
    images: dict[str, str]
    workdir: str
    flashinfer: str
    gpus: str  # auto | all | none


@dataclass(frozen=True)
class HostConfig:
    workdir: str
    flashinfer: str


@dataclass(frozen=True)
class CompileConfig:
    nvcc: str
    flags: list[str]
    include_dirs: list[str]
    link: list[str]
    default_arch: str
    timeout_s: int
    jobs: int
    memory_gb_per_job: float


@dataclass(frozen=True)
class RunConfig:
    timeout_s: int


@dataclass(frozen=True)
class KernelsConfig:
    timeout_s: int = 1800  # the whole kernel test session (`invoke kernels.test`)


@dataclass(frozen=True)
class Config:
    path: pathlib.Path
    root: pathlib.Path
    docker: DockerConfig
    host: HostConfig
    compile: CompileConfig
    run: RunConfig
    reports_dir: pathlib.Path
    manifest: pathlib.Path
    repros_dir: pathlib.Path
    raw: dict = field(repr=False, default_factory=dict)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


class _Reader:
    """Typed access to a nested mapping that names the offending key in every error."""

    def __init__(self, path: pathlib.Path, data: Any):
        self.path = path
        if not isinstance(data, dict):
            raise ConfigError(path, None, f"expected a mapping at the top level, got {type(data).__name__}")
        self.data = data

    def section(self, name: str, allowed: set[str]) -> dict:
        value = self.data.get(name)
        if not isinstance(value, dict):
            raise ConfigError(self.path, name, "missing or not a mapping")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(self.path, f"{name}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def get(self, section: dict, prefix: str, key: str, kind, *, check=None, what: str | None = None):
        full = f"{prefix}.{key}"
        if key not in section:
            raise ConfigError(self.path, full, "missing")
        value = section[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list and ok:
            ok = all(isinstance(v, str) for v in value)
        if kind is dict and ok:
            ok = all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        if ok and check is not None:
            ok = check(value)
        if not ok:
            expected = what or {str: "a string", int: "an integer", list: "a list of strings",
                                dict: "a mapping of strings", float: "a number"}[kind]
            raise ConfigError(self.path, full, f"expected {expected}, got {value!r}")
        return value


def find_root(start: pathlib.Path | None = None) -> pathlib.Path:
    """The project root: the nearest directory upwards holding gpurepro.yaml."""
    here = (start or pathlib.Path.cwd()).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return pathlib.Path(__file__).resolve().parent.parent


def load_yaml(path: pathlib.Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {problem}") from None


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("GPUREPRO_CONFIG") or find_root() / CONFIG_NAME
    path = pathlib.Path(path).resolve()
    r = _Reader(path, load_yaml(path))
    top_allowed = {"version", "docker", "host", "compile", "run", "reports_dir", "manifest", "kernels"}
    unknown = sorted(set(r.data) - top_allowed)
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown key (allowed: {', '.join(sorted(top_allowed))})")
    if r.data.get("version") != 1:
        raise ConfigError(path, "version", f"expected 1, got {r.data.get('version')!r}")

    d = r.section("docker", {"container", "image", "base_image", "images", "workdir", "flashinfer", "gpus"})
    abs_path = lambda v: v.startswith("/")  # noqa: E731
    name_ok = lambda v: bool(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", v))  # noqa: E731
    docker = DockerConfig(
        container=env.get("GPUREPRO_CONTAINER") or r.get(d, "docker", "container", str, check=name_ok,
                                                        what="a container name ([a-zA-Z0-9_.-])"),
        image=env.get("GPUREPRO_IMAGE") or r.get(d, "docker", "image", str, check=bool),
        base_image=r.get(d, "docker", "base_image", str, check=bool),
        images=r.get(d, "docker", "images", dict),
        workdir=r.get(d, "docker", "workdir", str, check=abs_path, what="an absolute path"),
        flashinfer=r.get(d, "docker", "flashinfer", str, check=abs_path, what="an absolute path"),
        gpus=r.get(d, "docker", "gpus", str, check=lambda v: v in {"auto", "all", "none"},
                   what="one of auto, all, none"),
    )
    h = r.section("host", {"workdir", "flashinfer"})
    host = HostConfig(
        workdir=os.path.expanduser(env.get("GPUREPRO_HOST_WORKDIR") or r.get(h, "host", "workdir", str, check=bool)),
        flashinfer=os.path.expanduser(env.get("GPUREPRO_FLASHINFER") or r.get(h, "host", "flashinfer", str, check=bool)),
    )
    c = r.section("compile", {"nvcc", "flags", "include_dirs", "link", "default_arch", "timeout_s", "jobs",
                              "memory_gb_per_job"})
    positive = lambda v: v > 0  # noqa: E731
    compile_cfg = CompileConfig(
        nvcc=r.get(c, "compile", "nvcc", str, check=bool),
        flags=r.get(c, "compile", "flags", list),
        include_dirs=r.get(c, "compile", "include_dirs", list),
        link=r.get(c, "compile", "link", list),
        default_arch=r.get(c, "compile", "default_arch", str, check=lambda v: bool(ARCH_RE.match(v)),
                           what="an arch like sm_120a"),
        timeout_s=r.get(c, "compile", "timeout_s", int, check=positive, what="a positive integer"),
        jobs=r.get(c, "compile", "jobs", int, check=lambda v: v >= 0, what="an integer >= 0 (0: automatic)"),
        memory_gb_per_job=float(r.get(c, "compile", "memory_gb_per_job", (int, float), check=positive,
                                      what="a positive number")),
    )
    rn = r.section("run", {"timeout_s"})
    run = RunConfig(timeout_s=r.get(rn, "run", "timeout_s", int, check=positive, what="a positive integer"))

    kernels = KernelsConfig()
    if "kernels" in r.data:  # optional section
        k = r.section("kernels", {"timeout_s"})
        kernels = KernelsConfig(timeout_s=r.get(k, "kernels", "timeout_s", int, check=positive,
                                                what="a positive integer"))

    root = path.parent
    reports = env.get("GPUREPRO_REPORTS") or r.data.get("reports_dir", "reports")
    manifest = r.data.get("manifest", "repros/manifest.yaml")
    for key, value in (("reports_dir", reports), ("manifest", manifest)):
        if not isinstance(value, str) or not value:
            raise ConfigError(path, key, f"expected a path, got {value!r}")
    manifest_path = (root / manifest).resolve()
    return Config(
        path=path, root=root, docker=docker, host=host, compile=compile_cfg, run=run,
        reports_dir=(root / reports).resolve(), manifest=manifest_path, repros_dir=manifest_path.parent,
        raw=r.data, kernels=kernels,
    )
