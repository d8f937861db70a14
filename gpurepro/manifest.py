"""repros/manifest.yaml: the bisection chain, one entry per step, validated strictly.

Against docs/schemas/manifest.schema.json, then for what a schema cannot say (ids unique, parents listed
before, files and patches present and inside repros/ and repros/patches/); every problem is reported.
"""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field

from .config import load_yaml
from .errors import ManifestError, UnknownStepError
from .validate import join_key, load_schema, schema_problems, string_keys


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
        """A step by id; `step1` is accepted for `step01` (the number without its zero padding), nothing looser."""
        if step_id in self.steps:
            return self.steps[step_id]
        found = re.fullmatch(r"(?P<prefix>[A-Za-z_]+?)0*(?P<number>\d+)", step_id or "")
        if found:
            padded = [sid for sid in self.steps
                      if re.fullmatch(rf"{re.escape(found['prefix'])}0*{int(found['number'])}", sid)]
            if len(padded) == 1:
                return self.steps[padded[0]]
        raise UnknownStepError(step_id, list(self.steps))

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


def _step_key(steps: list):
    """Schema paths ["steps", 3, "expect"] as the file's reader knows them: steps.step03.expect."""
    def key_of(parts: list) -> str:
        if len(parts) >= 2 and parts[0] == "steps" and isinstance(parts[1], int):
            entry = steps[parts[1]] if parts[1] < len(steps) else None
            step_id = entry.get("id") if isinstance(entry, dict) else None
            head = f"steps.{step_id}" if isinstance(step_id, str) else f"steps[{parts[1]}]"
            rest = join_key(parts[2:])
            return f"{head}.{rest}" if rest and not rest.startswith("[") else head + rest
        return join_key(parts)
    return key_of


def _inside(base: pathlib.Path, name: str) -> bool:
    """Does repros/<name> (links followed) stay inside `base`? A manifest must not reach the host's files."""
    try:
        target = (base / name).resolve()
        return target == base.resolve() or base.resolve() in target.parents
    except (OSError, RuntimeError):
        return False


def _semantic_problems(path: pathlib.Path, steps: list) -> list[tuple[str, str]]:
    """What a schema cannot say: ids unique, parents listed before, files and patches present and confined."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    key_of = _step_key(steps)
    repros, patches_dir = path.parent, path.parent / "patches"
    for index, entry in enumerate(steps):
        if not isinstance(entry, dict):
            continue
        where = key_of(["steps", index])
        step_id = entry.get("id")
        if isinstance(step_id, str):
            if step_id in seen:
                problems.append((f"{where}.id", "duplicate step id"))
            seen.add(step_id)
        parent = entry.get("parent")
        if isinstance(parent, str) and parent not in seen - {step_id}:
            problems.append((f"{where}.parent", f"{parent!r} is not a step listed before this one"))
        file = entry.get("file")
        if isinstance(file, str) and file.endswith(".cu") and "/" not in file:
            if not _inside(repros, file):
                problems.append((f"{where}.file", f"{file} leads outside repros/"))
            elif not (repros / file).is_file():
                problems.append((f"{where}.file", f"{file} does not exist"))
        for patch in entry.get("patches") or []:
            if not isinstance(patch, str):
                continue
            if patch.startswith("/") or ".." in patch.split("/"):
                continue  # the schema's pattern has said so already: one line per problem
            if not _inside(patches_dir, patch):  # a link leading out
                problems.append((f"{where}.patches", f"{patch} is outside repros/patches/ (patches must live there)"))
            elif not (patches_dir / patch).is_file():
                problems.append((f"{where}.patches", f"patches/{patch} does not exist"))
    return problems


def load_manifest(path: str | pathlib.Path) -> Manifest:
    path = pathlib.Path(path)
    data = string_keys(load_yaml(path, ManifestError))
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("steps"), list):
        _fail(path, None, "expected `version: 1` and a `steps:` list")
    steps = data["steps"]
    problems = schema_problems(data, load_schema("manifest"), key_of=_step_key(steps))
    problems += _semantic_problems(path, steps)
    if problems:
        raise ManifestError.collected(path, problems)
    manifest = Manifest(path=path)
    for entry in steps:
        targets = tuple(entry["targets"])
        manifest.steps[entry["id"]] = Step(
            id=entry["id"], file=entry["file"], parent=entry["parent"], change=entry["change"].strip(),
            targets=targets, compile=dict(entry.get("compile") or {t: "unknown" for t in targets}),
            expect=dict(entry["expect"]), notes=(entry.get("notes") or "").strip(),
            patches=tuple(entry.get("patches") or ()),
        )
    return manifest


def device_arch_of(target: str) -> str:
    """sm_120a -> sm_120: the manifest keys expectations by device, not by compile variant."""
    return re.sub(r"[af]$", "", target)
