"""What a run tells a CI system: the GitHub step summary and GitHub workflow-command annotations.

Inputs are plain values (a path or markdown text; dicts with step, file, verdict, reason) so the end of any
kind of run can call these. Only `github_step_summary` touches a file; the rest are pure.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Mapping

from .errors import InfraError

ERROR_VERDICTS = ("departed", "changed")  # the outcome moved: a regression, or a fix to record
WARNING_VERDICTS = ("flaky",)              # departed once, matched on the rerun
MAX_PER_LEVEL = 10      # GitHub shows at most 10 error and 10 warning annotations per step; more are dropped
SUMMARY_LIMIT = 1024 * 1024  # GitHub refuses a step's summary file over 1 MiB (and shows none of it)


def escape_data(text: str) -> str:
    """A workflow command's message: GitHub's runner decodes only %25, %0D and %0A there."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file=, title=): ':' and ',' end the value unless encoded."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, *, file: str | None = None, line: int | None = None,
               title: str | None = None) -> str:
    """One `::error ...::message` / `::warning ...` / `::notice ...` line."""
    if level not in ("error", "warning", "notice"):
        raise ValueError(f"annotation level {level!r} is not error, warning or notice")
    props = [f"{key}={escape_property(str(value))}"
             for key, value in (("file", file), ("line", line), ("title", title)) if value not in (None, "")]
    return f"::{level}{' ' + ','.join(props) if props else ''}::{escape_data(message)}"


def _relative(file: str | os.PathLike | None, root: str | os.PathLike | None) -> str | None:
    """The path GitHub attaches an annotation to: relative to the checkout, '/' separated."""
    if not file:
        return None
    path = pathlib.PurePath(file)
    if root is not None and path.is_absolute():
        try:
            path = path.relative_to(pathlib.PurePath(root))
        except ValueError:
            pass  # outside the checkout: GitHub shows it unattached, still better than nothing
    return path.as_posix()


def _message(result: Mapping) -> str:
    reason = str(result.get("reason") or "").strip()
    expected, observed = result.get("expected"), result.get("observed")
    if expected and observed:
        return f"expected {expected}, observed {observed}" + (f": {reason}" if reason else "")
    return reason or f"{result.get('step', '?')}: {result.get('verdict')}"


def _title(result: Mapping) -> str:
    target = result.get("target")
    return f"{result.get('step', '?')} {result.get('verdict')}" + (f" on {target}" if target else "")


def github_annotations(results: Iterable[Mapping], *, root: str | os.PathLike | None = None,
                       limit: int = MAX_PER_LEVEL) -> list[str]:
    """Annotations for a run's results: `::error` for departed/changed steps, `::warning` for flaky ones.

    Each result is a mapping with `step`, `file` (the step's source, e.g. repros/step14_x.cu), `verdict`,
    `reason`, and optionally `target`, `line`, `expected`, `observed`. Other verdicts make no annotation.
    Errors come first; past `limit` per level the last slot says how many more there are (GitHub would
    silently drop them).
    """
    by_level: dict[str, list[str]] = {"error": [], "warning": []}
    for result in results:
        verdict = str(result.get("verdict", ""))
        level = "error" if verdict in ERROR_VERDICTS else "warning" if verdict in WARNING_VERDICTS else None
        if level is None:
            continue
        line = annotation(level, _message(result), file=_relative(result.get("file"), root),
                          line=result.get("line"), title=_title(result))
        if line not in by_level[level]:
            by_level[level].append(line)
    out: list[str] = []
    for level, lines in by_level.items():
        if limit > 0 and len(lines) > limit:
            more = len(lines) - (limit - 1)
            what = "changed or departed" if level == "error" else "flaky"
            lines = lines[:limit - 1] + [annotation(level, f"{more} more {what} steps: see the step summary",
                                                    title="gpurepro")]
        out.extend(lines)
    return out


def fit_summary(text: str, room: int) -> str:
    """`text` cut at a line boundary to fit `room` bytes (UTF-8), with a last line saying it was cut."""
    data = text.encode()
    if len(data) <= room:
        return text
    note = (f"\n\n*Summary cut: {len(data)} bytes, GitHub keeps at most {SUMMARY_LIMIT} per step. "
            "The full summary.md is in the run directory.*\n")
    budget = max(room - len(note.encode()), 0)
    head = data[:budget].decode(errors="ignore")
    head = head[:head.rfind("\n") + 1] if "\n" in head else ""
    return head + note if len((head + note).encode()) <= room else ""


def _markdown(markdown_path_or_text: str | os.PathLike) -> str:
    """A Path, or a one-line str naming a file (an existing one, or one ending in .md), is read; any other str
    is the markdown itself."""
    value = markdown_path_or_text
    if isinstance(value, os.PathLike) or ("\n" not in value and (os.path.isfile(value) or value.endswith(".md"))):
        path = pathlib.Path(value)
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InfraError(f"cannot read the run summary {path}: {exc.strerror or exc}") from exc
    return str(value)


def github_step_summary(markdown_path_or_text: str | os.PathLike, env: Mapping[str, str] | None = None) -> bool:
    """Append the run's summary (summary.md's path, or markdown text) to `$GITHUB_STEP_SUMMARY`.

    Returns False, doing nothing, outside GitHub Actions (the variable unset or empty). Cut to what is left
    of GitHub's 1 MiB per step. Raises InfraError when the file cannot be written: the caller should print
    it as a warning, since a missing summary must not change the run's exit code.
    """
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    text = _markdown(markdown_path_or_text)
    if not text.endswith("\n"):
        text += "\n"  # a later step's append starts on its own line
    try:
        used = os.path.getsize(target)
    except OSError:
        used = 0
    text = fit_summary(text, max(SUMMARY_LIMIT - used, 0))
    try:
        with open(target, "a", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise InfraError(f"cannot append to the GitHub step summary {target}: {exc.strerror or exc}",
                         hint="check $GITHUB_STEP_SUMMARY") from exc
    return True
