"""repros/manifest.yaml: the bisection chain, one entry per step, validated strictly."""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field

from .config import ARCH_RE, load_yaml
from .errors import ManifestError, UnknownStepError
from .outcomes import COMPILE_EXPECTATIONS, EXPECTATIONS

STEP_ID_RE = re.compile(r"^[a-z0-9_]+$")
DEVICE_ARCH_RE = re.compile(r"^sm_\d{2,3}$")
STEP_KEYS = {"id", "file", "parent", "change", "targets", "compile", "expect", "notes", "patches"}
REQUIRED = ("id", "file", "parent", "change", "targets", "expect")


@dataclass(frozen=True)
class Step:
    id: str
    file: str
    parent: str | None
    change: str
    targets: tuple[str, ...]
    compile: dict[str, str]          # compile target -> ok | compile_error | unknown
    expect: dict[str, str]           # device arch (sm_120) -> outcome | unknown
    notes: str = ""
    patches: tuple[str, ...] = ()    # CUTLASS patches (repros/patches/) the step needs

    @property
    def binary(self) -> str:
        return self.id


@dataclass
class Manifest:
    path: pathlib.Path
    steps: dict[str, Step] = field(default_factory=dict)

    @property
    def root(self) -> pathlib.Path:
        return self.path.parent

    def get(self, step_id: str) -> Step:
        try:
            return self.steps[step_id]
        except KeyError:
            raise UnknownStepError(step_id, list(self.steps)) from None

    def select(self, ids: list[str]) -> list[Step]:
        return [self.get(i) for i in ids]

    def source(self, step: Step) -> pathlib.Path:
        return self.root / step.file

    def chain(self, from_id: str | None = None, to_id: str | None = None) -> list[Step]:
        """Steps from `from_id` to `to_id` following parent links (to_id's ancestry, oldest first)."""
        end = self.get(to_id) if to_id else list(self.steps.values())[-1]
        path = [end]
        while path[-1].parent and (from_id is None or path[-1].id != from_id):
            path.append(self.get(path[-1].parent))
        if from_id and path[-1].id != from_id:
            raise ManifestError(self.path, f"steps.{to_id}", f"{from_id} is not an ancestor of {to_id}")
        return list(reversed(path))


def _fail(path, key, problem):
    raise ManifestError(path, key, problem)


def _arch_map(path, key, value, key_re, allowed, what_key) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        _fail(path, key, "expected a non-empty mapping")
    for arch, outcome in value.items():
        if not isinstance(arch, str) or not key_re.match(arch):
            _fail(path, f"{key}.{arch}", f"expected {what_key}")
        if outcome not in allowed:
            _fail(path, f"{key}.{arch}", f"unknown outcome {outcome!r} (allowed: {', '.join(allowed)})")
    return dict(value)


def load_manifest(path: str | pathlib.Path) -> Manifest:
    path = pathlib.Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("steps"), list):
        _fail(path, None, "expected `version: 1` and a `steps:` list")
    manifest = Manifest(path=path)
    for index, entry in enumerate(data["steps"]):
        where = f"steps[{index}]"
        if not isinstance(entry, dict):
            _fail(path, where, "expected a mapping")
        step_id = entry.get("id")
        if isinstance(step_id, str):
            where = f"steps.{step_id}"
        unknown = sorted(set(entry) - STEP_KEYS)
        if unknown:
            _fail(path, f"{where}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(STEP_KEYS))})")
        for key in REQUIRED:
            if key not in entry:
                _fail(path, f"{where}.{key}", "missing")
        if not isinstance(step_id, str) or not STEP_ID_RE.match(step_id):
            _fail(path, f"{where}.id", "expected [a-z0-9_]+")
        if step_id in manifest.steps:
            _fail(path, f"{where}.id", "duplicate step id")
        file = entry["file"]
        if not isinstance(file, str) or not file.endswith(".cu") or "/" in file:
            _fail(path, f"{where}.file", "expected a .cu file name in repros/")
        if not (path.parent / file).is_file():
            _fail(path, f"{where}.file", f"{file} does not exist")
        parent = entry["parent"]
        if parent is not None and (not isinstance(parent, str) or parent not in manifest.steps):
            _fail(path, f"{where}.parent", f"{parent!r} is not a step listed before this one")
        if not isinstance(entry["change"], str) or not entry["change"].strip():
            _fail(path, f"{where}.change", "expected a one-line description")
        targets = entry["targets"]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and ARCH_RE.match(t) for t in targets):
            _fail(path, f"{where}.targets", "expected a list of archs like sm_120a")
        compile_map = _arch_map(path, f"{where}.compile", entry.get("compile") or {t: "unknown" for t in targets},
                                ARCH_RE, COMPILE_EXPECTATIONS, "a compile target like sm_120a")
        expect = _arch_map(path, f"{where}.expect", entry["expect"], DEVICE_ARCH_RE, EXPECTATIONS,
                           "a device arch like sm_120")
        patches = entry.get("patches") or []
        if not isinstance(patches, list) or not all(isinstance(p, str) for p in patches):
            _fail(path, f"{where}.patches", "expected a list of patch file names")
        for patch in patches:
            if not (path.parent / "patches" / patch).is_file():
                _fail(path, f"{where}.patches", f"patches/{patch} does not exist")
        notes = entry.get("notes") or ""
        if not isinstance(notes, str):
            _fail(path, f"{where}.notes", "expected text")
        manifest.steps[step_id] = Step(
            id=step_id, file=file, parent=parent, change=entry["change"].strip(), targets=tuple(targets),
            compile=compile_map, expect=expect, notes=notes.strip(), patches=tuple(patches),
        )
    if not manifest.steps:
        _fail(path, "steps", "no steps listed")
    return manifest


def device_arch_of(target: str) -> str:
    """sm_120a -> sm_120: the manifest keys expectations by device, not by compile variant."""
    return re.sub(r"[af]$", "", target)
