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
        env.pop("GPUREPRO_CACHE_DIR", None)
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
    raw["cache"] = {"dir": str(tmp_path / "cache"), "max_gb": 10, "enabled": True}  # never the user's own cache
    if repros is not None:
        raw["manifest"] = str(repros / "manifest.yaml")
    else:
        target = tmp_path / "repros"
        shutil.copytree(PROGRAMS, target)
        (target / "manifest.yaml").write_text(yaml.safe_dump({"version": 1, "steps": steps or []}, sort_keys=False))
        raw["manifest"] = str(target / "manifest.yaml")
    (tmp_path / "gpurepro.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return Project(tmp_path, container)


def device_part(gpu_arch: str | None, compile_arch: str) -> str:
    """What a step that compiled for `compile_arch` does on the device a run saw (run.json's gpu_arch):
    "no GPU" (skipped), "no image" (skipped: the binary has nothing for that GPU) or "runs".
    Integration tests use it so they hold on a GPU host as well as here."""
    if not gpu_arch:
        return "no GPU"
    # SASS runs on its own major.minor only: an sm_90a binary runs on sm_90, not on sm_120 (and the reverse)
    return "runs" if compile_arch.rstrip("af") == gpu_arch else "no image"


def assert_device_part(step: dict, gpu_arch: str | None, compile_arch: str) -> None:
    """A built step's outcome is the one its device part allows (see device_part)."""
    part = device_part(gpu_arch, compile_arch)
    if part == "no GPU":
        assert (step["outcome"], step["reason"]) == ("skipped", "no GPU"), step
    elif part == "no image":
        assert step["outcome"] == "skipped" and step["reason"].startswith(f"no image for {gpu_arch}"), step
    else:
        assert step["outcome"] != "skipped", step
