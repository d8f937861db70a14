"""reports/ retention: remove old run directories, never the newest, reports/latest's, or one in use.

Only directories named like run ids (YYYYMMDDTHHMMSSZ-xxxxxx) are candidates; anything else under
reports/ (its README, a user's notes) is never touched. A run is in use while a live process holds its
lock (runlock); an `interrupted` run whose process is gone is an ordinary old run. Removal first renames
the directory out of sight, so a reader never finds half of one.
"""
from __future__ import annotations

import os
import pathlib
import re
import secrets
import shutil
from dataclasses import dataclass, field

from .run import lock as runlock
from .errors import UsageError

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


@dataclass
class Pruned:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    protected: dict[str, str] = field(default_factory=dict)  # run id -> why it stays beyond --keep


def runs(reports_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run directories, oldest first (run ids start with their UTC start time)."""
    reports_dir = pathlib.Path(reports_dir)
    if not reports_dir.is_dir():
        return []
    return sorted((p for p in reports_dir.iterdir()
                   if RUN_ID_RE.match(p.name) and p.is_dir() and not p.is_symlink()), key=lambda p: p.name)


def prune(reports_dir: pathlib.Path, keep: int, *, dry_run: bool = False) -> Pruned:
    if keep is None or int(keep) < 0:
        raise UsageError(f"--keep {keep!r}: expected a number of runs >= 0")
    keep = int(keep)
    reports_dir = pathlib.Path(reports_dir)
    found = runs(reports_dir)
    result = Pruned()
    latest = reports_dir / "latest"
    latest_target = latest.resolve().name if latest.is_symlink() or latest.exists() else None
    newest = found[-keep:] if keep else []
    for index, path in enumerate(found):
        why = None
        if path in newest:
            result.kept.append(path.name)
            continue
        if index == len(found) - 1:
            why = "newest run"
        elif path.name == latest_target:
            why = "reports/latest points at it"
        else:
            lock = runlock.holder(path)
            if lock is not None:
                why = f"in use ({runlock.describe(lock)})"
        if why:
            result.protected[path.name] = why
            continue
        if not dry_run:
            _remove(path)
        result.removed.append(path.name)
    return result


def _remove(path: pathlib.Path) -> None:
    hidden = path.with_name(f".pruning-{path.name}-{secrets.token_hex(3)}")
    os.rename(path, hidden)  # atomic: the run is gone from view before its files are deleted
    shutil.rmtree(hidden)
