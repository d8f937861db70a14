"""The tool's configuration: one YAML file at the project root (gpurepro.yaml), validated strictly.

Validated against docs/schemas/config.schema.json; every problem is reported, one line each naming the
file, the key and what is wrong (one ConfigError with `problems`, exit 2).
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
from .validate import load_schema, schema_problems, string_keys

FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # SafeLoader where PyYAML has no libyaml

CONFIG_NAME = "gpurepro.yaml"
ARCH_RE = re.compile(r"^sm_\d{2,3}[af]?$")
DEFAULT_LOG_CAP_BYTES = 8 * 1024 * 1024
MAX_YAML_BYTES = 16 * 1024 * 1024  # a config or manifest is kilobytes; refuse a huge file before parsing it


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
    log_cap_bytes: int = DEFAULT_LOG_CAP_BYTES  # output kept per command: a quarter head, three quarters tail


@dataclass(frozen=True)
class CacheConfig:
    """The compile action cache (docs/cache.md): where, how large, and whether runs read it."""

    dir: pathlib.Path
    max_gb: float = 10.0
    enabled: bool = True

    @property
    def max_bytes(self) -> int:
        return int(self.max_gb * 2**30)


def _default_cache_dir(env) -> pathlib.Path:
    from .cache import default_cache_dir

    return default_cache_dir(env)


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
    cache: CacheConfig = field(default_factory=lambda: CacheConfig(_default_cache_dir(None)))


def find_root(start: pathlib.Path | None = None) -> pathlib.Path:
    """The project root: the nearest directory upwards holding gpurepro.yaml."""
    here = (start or pathlib.Path.cwd()).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return pathlib.Path(__file__).resolve().parent.parent


def load_yaml(path: pathlib.Path, error: type[ConfigError] = ConfigError) -> Any:
    """A YAML file's data; ConfigError (exit 2, one line naming the file) for anything unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise error(path, None, "file not found") from None
    except IsADirectoryError:
        raise error(path, None, "is a directory, not a file") from None
    except OSError as exc:
        raise error(path, None, f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(path, None, f"larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB: not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(path, None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})",
                          hint="save the file as UTF-8") from None
    try:
        try:
            # libyaml's parser is ~15x faster (the manifest: 27 ms -> 2 ms, read twice per run); its error
            # messages say less ("cannot start any token", not which character), so a failure is re-read below
            return yaml.load(text, Loader=FAST_SAFE_LOADER)
        except yaml.YAMLError:
            return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(path, where, f"invalid YAML: {problem}") from None
    except RecursionError:
        raise error(path, None, "invalid YAML: nested too deeply") from None


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("GPUREPRO_CONFIG") or find_root() / CONFIG_NAME
    path = pathlib.Path(path).resolve()
    data = string_keys(load_yaml(path))
    problems = schema_problems(data, load_schema("config"))
    if problems:
        raise ConfigError.collected(path, problems)

    d, h, c, rn = data["docker"], data["host"], data["compile"], data["run"]
    docker = DockerConfig(
        container=env.get("GPUREPRO_CONTAINER") or d["container"],
        image=env.get("GPUREPRO_IMAGE") or d["image"],
        base_image=d["base_image"], images=dict(d["images"]), workdir=d["workdir"],
        flashinfer=d["flashinfer"], gpus=d["gpus"],
    )
    host = HostConfig(
        workdir=os.path.expanduser(env.get("GPUREPRO_HOST_WORKDIR") or h["workdir"]),
        flashinfer=os.path.expanduser(env.get("GPUREPRO_FLASHINFER") or h["flashinfer"]),
    )
    compile_cfg = CompileConfig(
        nvcc=c["nvcc"], flags=list(c["flags"]), include_dirs=list(c["include_dirs"]), link=list(c["link"]),
        default_arch=c["default_arch"], timeout_s=c["timeout_s"], jobs=c["jobs"],
        memory_gb_per_job=float(c["memory_gb_per_job"]),
    )
    run = RunConfig(timeout_s=rn["timeout_s"], log_cap_bytes=rn.get("log_cap_bytes", DEFAULT_LOG_CAP_BYTES))
    kernels = KernelsConfig(**data["kernels"]) if "kernels" in data else KernelsConfig()
    cache_raw = data.get("cache") or {}
    cache_dir = env.get("GPUREPRO_CACHE_DIR") or cache_raw.get("dir")
    cache = CacheConfig(dir=pathlib.Path(os.path.expanduser(cache_dir)) if cache_dir else _default_cache_dir(env),
                        max_gb=float(cache_raw.get("max_gb", 10.0)), enabled=bool(cache_raw.get("enabled", True)))

    root = path.parent
    reports = env.get("GPUREPRO_REPORTS") or data.get("reports_dir", "reports")
    manifest_path = (root / data.get("manifest", "repros/manifest.yaml")).resolve()
    return Config(
        path=path, root=root, docker=docker, host=host, compile=compile_cfg, run=run,
        reports_dir=(root / reports).resolve(), manifest=manifest_path, repros_dir=manifest_path.parent,
        raw=data, kernels=kernels, cache=cache,
    )
