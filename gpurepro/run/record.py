"""run.json's one owner: `RunRecord`, a typed record with a format version.

No other module knows run.json's keys: writers fill a RunRecord's fields, readers get them back typed
(`RunRecord.read(path)`), and records written by older versions of the tool (no `format_version`, missing
keys) read with defaults. Keys this version does not know are kept in `extra` and written back unchanged.
The record's JSON Schema is docs/schemas/run.schema.json; with GPUREPRO_VALIDATE_RECORDS=1 (the test suite
sets it) every record is checked against it before it is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import InfraError
from .directory import RUN_JSON, STATUS_INTERRUPTED, now_utc, write_json

FORMAT_VERSION = 2  # 1: records written before the version field existed
KIND_REPRO = "repro"
KIND_KERNELS = "kernels"
SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "schemas"
VALIDATE_ENV = "GPUREPRO_VALIDATE_RECORDS"


@dataclass
class StepSummary:
    """One step's line in run.json (its full result is steps/<step>/result.json)."""

    step: str
    arch: str
    outcome: str
    reason: str = ""
    expected: str | None = None
    verdict: str = "new"
    patches: list[dict] = field(default_factory=list)
    cache: dict | None = None  # {"status": "hit"|"miss"|"off", "key": sha256}
    toolchain: str | None = None

    @property
    def dirname(self) -> str:
        """Its directory under steps/ (see StepResult.dirname)."""
        return self.step if not self.toolchain else f"{self.step}@{self.toolchain}"


@dataclass
class KernelsInfo:
    """What a kernels.test run adds: the copied files, the probe of the Python there, pytest's result."""

    paths: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    probe: dict | None = None
    argv: list[str] = field(default_factory=list)
    pytest_exit_code: int | None = None
    seconds: float | None = None
    timed_out: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)


@dataclass
class RunRecord:
    run_id: str
    kind: str = KIND_REPRO
    format_version: int = FORMAT_VERSION
    status: str = STATUS_INTERRUPTED  # until the run ends: a run killed outright stays marked
    tool: dict = field(default_factory=lambda: {"name": "gpurepro", "version": __version__})
    started_at: str | None = None
    finished_at: str | None = None
    command: list[str] = field(default_factory=list)
    request: dict = field(default_factory=dict)
    git: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    backend: str = ""
    config: str = ""
    environment: dict = field(default_factory=dict)  # what the runner found: image, nvcc, CUTLASS, GPU
    env_vars: dict = field(default_factory=dict)  # the tool's environment, secrets redacted
    steps: list[StepSummary] = field(default_factory=list)
    patches: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    reproduce: str | None = None
    kernels: KernelsInfo | None = None
    toolchains: list[dict] = field(default_factory=list)  # a matrix run: each named toolchain's exact versions
    extra: dict = field(default_factory=dict)  # keys written by another version of the tool, kept as they are

    # --- typed views readers need ---------------------------------------------------------------------
    @property
    def hostname(self) -> str:
        return str(self.host.get("hostname") or "")

    @property
    def git_commit(self) -> str | None:
        return self.git.get("commit")

    @property
    def git_dirty(self) -> bool | None:
        return self.git.get("dirty")

    @property
    def compile_only(self) -> bool:
        return bool(self.request.get("compile_only"))

    def env(self, key: str, default=None):
        value = self.environment.get(key)
        return default if value in (None, "") else value

    # --- JSON ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "steps":
                value = [dataclasses.asdict(s) for s in value]
            elif f.name == "kernels":
                if value is None:
                    continue  # a repro run has no kernels section
                value = dataclasses.asdict(value)
            data[f.name] = value
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        """A record as written by any version of the tool, or a damaged or hostile one (from a bundle): each field
        is kept only when it has its declared type, else it takes its default. ValueError without a run_id."""
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
            raise ValueError("not a run record (no run_id)")
        values = _typed(cls, data)
        values.setdefault("format_version", 1)
        values.setdefault("kind", KIND_KERNELS if isinstance(data.get("kernels"), dict) else KIND_REPRO)
        values["steps"] = [StepSummary(**_typed(StepSummary, s)) for s in data.get("steps") or []
                           if isinstance(s, dict) and isinstance(s.get("step"), str)
                           and isinstance(s.get("arch", ""), str) and isinstance(s.get("outcome", ""), str)
                           for s in [{"arch": "", "outcome": "", **s}]]
        if isinstance(data.get("kernels"), dict):
            values["kernels"] = KernelsInfo(**_typed(KernelsInfo, data["kernels"]))
        record = cls(**values)
        known = {f.name for f in dataclasses.fields(cls)}
        record.extra = {k: v for k, v in data.items() if k not in known}
        return record

    @classmethod
    def read(cls, run_path: pathlib.Path) -> "RunRecord":
        return cls.from_json(json.loads((pathlib.Path(run_path) / RUN_JSON).read_text()))

    def write(self, run_path: pathlib.Path) -> None:
        data = self.to_json()
        if os.environ.get(VALIDATE_ENV):
            validate("run", data)
        try:
            write_json(pathlib.Path(run_path) / RUN_JSON, data)
        except OSError as exc:
            raise InfraError(f"cannot write {pathlib.Path(run_path) / RUN_JSON}: {exc.strerror or exc}",
                             hint="free disk space under the reports directory (GPUREPRO_REPORTS)") from None

    def finish(self, status: str) -> None:
        self.status = status
        self.finished_at = now_utc().isoformat()


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _accepts(annotation: str, value) -> bool:
    """Whether `value` fits a field's annotation (as written in this module: `str | None`, `list[str]`, ...)."""
    for option in (a.strip() for a in annotation.split("|")):
        if option == "None":
            if value is None:
                return True
            continue
        base, _, inner = option.partition("[")
        kind = _TYPES.get(base)
        if kind is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            continue
        if base == "list" and inner.startswith("str") and not all(isinstance(v, str) for v in value):
            continue
        if base == "list" and inner.startswith("dict") and not all(isinstance(v, dict) for v in value):
            continue
        return True
    return False


def _typed(cls, data: dict) -> dict:
    """The fields of `cls` found in `data` with their declared types; the rest fall back to their defaults."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in ("steps", "kernels", "extra") and cls is RunRecord:
            continue
        if f.name in data and data[f.name] is not None and _accepts(str(f.type), data[f.name]):
            out[f.name] = data[f.name]
    return out


def validate(kind: str, data: dict) -> None:
    """Check a record against docs/schemas/<kind>.schema.json; ValueError naming the first problem."""
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise ValueError(f"{kind}.json does not match its schema at {where}: {first.message}")


def read_record(run_path: pathlib.Path) -> RunRecord:
    return RunRecord.read(run_path)
