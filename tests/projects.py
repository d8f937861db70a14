"""A throwaway project for tests: a copy of the real configuration with its own manifest, reports and container."""
from __future__ import annotations

import os
import pathlib
import shutil
import uuid

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = pathlib.Path(__file__).resolve().parent / "data" / "programs"


class Project:
    """A copy of the real configuration pointing at its own manifest, reports and container name."""

    def __init__(self, path: pathlib.Path, container: str):
        self.path = path
        self.container = container
        self.config_path = path / "gpurepro.yaml"
        self.reports = path / "reports"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(GPUREPRO_CONFIG=str(self.config_path), GPUREPRO_CONTAINER=self.container,
                   PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        env.pop("GPUREPRO_REPORTS", None)
        return env

    def latest(self) -> pathlib.Path:
        return (self.reports / "latest").resolve()


def make_project(tmp_path: pathlib.Path, *, steps: list[dict] | None = None, repros: pathlib.Path | None = None,
                 host_workdir: pathlib.Path | None = None) -> Project:
    """steps: manifest entries for the tiny programs in tests/data/programs; repros: use a real repros dir."""
    raw = yaml.safe_load((ROOT / "gpurepro.yaml").read_text())
    container = f"gpurepro-test-{uuid.uuid4().hex[:8]}"
    raw["docker"]["container"] = container
    raw["host"]["workdir"] = str(host_workdir or tmp_path / "hostwork")
    raw["reports_dir"] = str(tmp_path / "reports")
    if repros is not None:
        raw["manifest"] = str(repros / "manifest.yaml")
    else:
        target = tmp_path / "repros"
        shutil.copytree(PROGRAMS, target)
        (target / "manifest.yaml").write_text(yaml.safe_dump({"version": 1, "steps": steps or []}, sort_keys=False))
        raw["manifest"] = str(target / "manifest.yaml")
    (tmp_path / "gpurepro.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return Project(tmp_path, container)
