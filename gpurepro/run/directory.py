"""The run directory (docs/contracts.md, "Report layout"), written atomically.

reports/<run-id>/{run.json, junit.xml, summary.md, steps/<step>/...} and reports/latest -> newest run.
run.json is written first with status `interrupted`, so a run killed outright is marked as such; it is
rewritten `complete` or `failed` when the run ends.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import secrets
import tempfile

from ..archive import _safe_relpath

RUN_JSON = "run.json"
STATUS_COMPLETE = "complete"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"


def atomic_write(path: pathlib.Path, data: bytes | str) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: pathlib.Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_run_id(moment: dt.datetime | None = None) -> str:
    moment = moment or now_utc()
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class RunDirectory:
    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.run_id = self.path.name

    @classmethod
    def create(cls, reports_dir: pathlib.Path) -> "RunDirectory":
        reports_dir = pathlib.Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = reports_dir / new_run_id()
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue

    def step_dir(self, step: str) -> pathlib.Path:
        return self.path / "steps" / _safe_relpath(step)

    def write_step_files(self, step: str, files: dict[str, bytes]) -> None:
        base = self.step_dir(step)
        for name, data in files.items():
            atomic_write(base / _safe_relpath(name), data)

    def point_latest(self) -> None:
        """reports/latest -> this run, swapped atomically (a reader sees the old or the new one)."""
        latest = self.path.parent / "latest"
        tmp = self.path.parent / f".latest.{secrets.token_hex(4)}"
        os.symlink(self.run_id, tmp)
        os.replace(tmp, latest)

