"""`invoke repro --toolchain default,cutlass-4.2` against the real engine on a tiny step: one run directory, a cell
per toolchain compiled in that toolchain's own image and container, each toolchain's versions recorded; the rerun
is all cache hits, keyed per toolchain."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from projects import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STEPS = [{"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
          "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}}]


def invoke(project, *args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=project.env(), capture_output=True,
                          text=True, timeout=1800)


def test_two_real_toolchains_on_a_small_step(project_factory, toolchain_image, docker_client):
    project = project_factory(steps=STEPS)
    containers = [f"{project.container}-default", f"{project.container}-cutlass-4.2"]
    try:
        done = invoke(project, "repro", "hello", "--toolchain", "default,cutlass-4.2", "--compile-only")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        record = json.loads((project.latest() / "run.json").read_text())
        cells = {s["toolchain"]: s for s in record["steps"]}
        assert set(cells) == {"default", "cutlass-4.2"}
        assert all(c["outcome"] == "compiled" and c["cache"]["status"] == "miss" for c in cells.values())
        assert cells["default"]["cache"]["key"] != cells["cutlass-4.2"]["cache"]["key"]  # another image, another key
        versions = {t["name"]: t["cutlass"] for t in record["toolchains"]}
        assert versions == {"default": "4.5.0", "cutlass-4.2": "4.2.1"}
        for name, toolchain in zip(containers, ("default", "cutlass-4.2")):  # each in its own image's container
            labels = docker_client.containers.get(name).labels
            assert labels.get("gpurepro.image-ref") == f"gpurepro/toolchain:{toolchain}", labels
        summary = (project.latest() / "summary.md").read_text()
        assert "| hello | sm_90a | compiled | compiled |" in summary
        again = invoke(project, "repro", "hello", "--toolchain", "default,cutlass-4.2", "--compile-only")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
        rerun = json.loads((project.latest() / "run.json").read_text())
        assert [s["cache"]["status"] for s in rerun["steps"]] == ["hit", "hit"]
    finally:
        for name in containers:
            try:
                docker_client.containers.get(name).remove(force=True)
            except Exception:  # noqa: BLE001 - never created
                pass
