"""Working with the bisection chain: diffs against the parent, flip tables, layout diffs, recording."""
from __future__ import annotations

import difflib
import json
import pathlib
import re
from dataclasses import dataclass

import yaml

from .errors import BadInputError, ManifestError
from .manifest import Manifest, Step, device_arch_of, load_manifest
from .outcomes import Outcome, StepResult, Verdict


# --- diffs ---------------------------------------------------------------------------------------
def step_diff(manifest: Manifest, step: Step, context: int = 3) -> str:
    """The unified diff of a step's source against its parent's: the one change it makes."""
    if step.parent is None:
        raise BadInputError(f"{step.id} has no parent to diff against")
    parent = manifest.get(step.parent)
    old = manifest.source(parent).read_text().splitlines(keepends=True)
    new = manifest.source(step).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"repros/{parent.file}", f"repros/{step.file}", n=context))


def changed_lines(diff: str) -> int:
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---")))


# --- flip table ----------------------------------------------------------------------------------
@dataclass
class FlipRow:
    step: str
    change: str
    observed: str        # outcome in this run
    expected: dict       # manifest expectations per device arch
    flipped: bool        # differs from the parent's outcome in this run


def flip_table(chain: list[Step], results: list[StepResult]) -> tuple[list[FlipRow], FlipRow | None]:
    by_step = {r.step: r for r in results}
    rows: list[FlipRow] = []
    first = None
    previous = None
    for step in chain:
        result = by_step.get(step.id)
        observed = result.outcome.value if result else "not run"
        flipped = previous is not None and observed != previous
        row = FlipRow(step.id, step.change, observed, dict(step.expect), flipped)
        rows.append(row)
        if flipped and first is None:
            first = row
        previous = observed
    return rows, first


GIT_GOOD, GIT_BAD, GIT_SKIP = 0, 1, 125


def git_bisect_code(results: list[StepResult]) -> int:
    """`git bisect run` semantics: 0 good, 1 bad, 125 this revision cannot be tested."""
    untestable = {Outcome.INFRA_ERROR, Outcome.SKIPPED}
    for r in results:
        if r.outcome in untestable:
            return GIT_SKIP
        if r.outcome is Outcome.COMPILE_ERROR and r.expected != Outcome.COMPILE_ERROR.value:
            return GIT_SKIP
    return GIT_BAD if any(r.verdict is Verdict.DEPARTED for r in results) else GIT_GOOD


# --- layout diffs --------------------------------------------------------------------------------
@dataclass
class LayoutDiff:
    name: str
    status: str          # same | differs | only in A | only in B
    fields: list[str]    # which fields differ (type, size, bytes)
    first_offsets: list[int]  # byte offsets that differ (first few)
    a: dict | None
    b: dict | None


def _bytes(record: dict) -> bytes:
    text = re.sub(r"[^0-9a-fA-F]", "", str(record.get("bytes_hex", "")))
    return bytes.fromhex(text[: len(text) // 2 * 2])


def diff_layouts(a: list[dict], b: list[dict], max_offsets: int = 16) -> list[LayoutDiff]:
    left = {r.get("name"): r for r in a}
    right = {r.get("name"): r for r in b}
    names = list(dict.fromkeys([*left, *right]))
    rows = []
    for name in names:
        ra, rb = left.get(name), right.get(name)
        if ra is None or rb is None:
            rows.append(LayoutDiff(name, "only in A" if rb is None else "only in B", [], [], ra, rb))
            continue
        fields = []
        for key in sorted((set(ra) | set(rb)) - {"event", "name", "bytes_hex"}):
            if ra.get(key) != rb.get(key):
                fields.append(key)
        ba, bb = _bytes(ra), _bytes(rb)
        offsets = [i for i in range(max(len(ba), len(bb))) if i >= len(ba) or i >= len(bb) or ba[i] != bb[i]]
        if offsets:
            fields.append("bytes")
        rows.append(LayoutDiff(name, "differs" if fields else "same", fields, offsets[:max_offsets], ra, rb))
    return rows


def find_layouts(reports_dir: pathlib.Path, step: str) -> tuple[pathlib.Path, list[dict]]:
    """layout.json of `step` from the newest run that has one (reports/latest first)."""
    reports_dir = pathlib.Path(reports_dir)
    runs = sorted((p for p in reports_dir.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True) \
        if reports_dir.is_dir() else []
    latest = reports_dir / "latest"
    if latest.exists():
        runs.insert(0, latest.resolve())
    for run in runs:
        path = run / "steps" / step / "layout.json"
        if path.is_file():
            return path, json.loads(path.read_text())
    raise BadInputError(f"no layout.json for {step} under {reports_dir}",
                        hint=f"run it first: `invoke repro {step}` (layouts are host-side: no GPU needed)")


# --- recording observed outcomes -----------------------------------------------------------------
def recordable(result: StepResult) -> list[tuple[str, str, str]]:
    """(step, manifest key path, value) items for a result that says something about the hardware."""
    if result.verdict is Verdict.INFRA or result.outcome in (Outcome.INFRA_ERROR, Outcome.INTERRUPTED):
        return []
    if result.toolchain is not None:  # the manifest's expectations are the configured toolchain's
        return []
    if result.outcome is Outcome.COMPILE_ERROR:
        # what does not compile for sm_121a is what a sm_121 device will show, whichever device ran it
        return [(result.step, f"compile.{result.arch}", Outcome.COMPILE_ERROR.value),
                (result.step, f"expect.{device_arch_of(result.arch)}", Outcome.COMPILE_ERROR.value)]
    if result.device_arch is None or result.outcome is Outcome.COMPILED:  # only the compile outcome is known
        return [(result.step, f"compile.{result.arch}", "ok")]
    return [(result.step, f"expect.{result.device_arch}", result.outcome.value)]


def record_expectations(manifest_path: pathlib.Path, results: list[StepResult]) -> list[str]:
    """Write observed outcomes back into the manifest's flow mappings, keeping its comments and layout."""
    path = pathlib.Path(manifest_path)
    lines = path.read_text().splitlines(keepends=True)
    changes = []
    for step, keypath, value in (item for result in results for item in recordable(result)):
        section, arch = keypath.split(".")
        start = next((i for i, line in enumerate(lines) if re.match(rf"\s*-\s+id:\s*{re.escape(step)}\s*$", line)), None)
        if start is None:
            raise ManifestError(path, f"steps.{step}", "not found while recording")
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*-\s+id:", lines[i])), len(lines))
        for i in range(start, end):
            match = re.match(rf"^(\s*){section}:\s*(\{{.*\}})\s*(#.*)?$", lines[i].rstrip("\n"))
            if match:
                mapping = yaml.safe_load(match.group(2)) or {}
                old = mapping.get(arch)
                mapping[arch] = value
                body = ", ".join(f"{k}: {v}" for k, v in mapping.items())
                comment = f"  {match.group(3)}" if match.group(3) else ""
                lines[i] = f"{match.group(1)}{section}: {{{body}}}{comment}\n"
                if old != value:
                    changes.append(f"{step}: {keypath}: {old or 'unset'} -> {value}")
                break
            if re.match(rf"^\s*{section}:", lines[i]):
                raise ManifestError(path, f"steps.{step}.{section}", "expected a one-line {...} mapping to record into")
        else:  # no such mapping yet (compile: is optional): add one after targets:
            anchor = next((i for i in range(start, end) if re.match(r"^\s*targets:", lines[i])), None)
            if anchor is None:
                raise ManifestError(path, f"steps.{step}.targets", "not found while recording")
            indent = re.match(r"^(\s*)", lines[anchor]).group(1)
            lines.insert(anchor + 1, f"{indent}{section}: {{{arch}: {value}}}\n")
            changes.append(f"{step}: {keypath}: unset -> {value}")
    text = "".join(lines)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    try:
        load_manifest(tmp)  # validate before replacing: a bad write never reaches the manifest
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return changes
