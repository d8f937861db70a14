"""A bundle made from a real container run, replayed through the real engine with the recorded image."""
import json
import subprocess
import sys

import pytest

from projects import ROOT

pytestmark = pytest.mark.docker

STEPS = [{"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
          "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}}]


def invoke(project, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=cwd,
                          env=project.env(), capture_output=True, text=True, timeout=900)


def test_bundle_of_a_container_run_replays_with_the_same_image(project_factory, toolchain_image, tmp_path):
    project = project_factory(steps=STEPS)
    done = invoke(project, "repro", "hello", "--compile-only", "--backend", "docker")
    assert done.returncode == 0, done.stdout + done.stderr
    run = project.latest()
    record = json.loads((run / "run.json").read_text())
    assert record["environment"]["image_id"].startswith("sha256:") and (run / "index.html").is_file()

    made = invoke(project, "bundle.create", "--output", str(tmp_path))
    assert made.returncode == 0, made.stderr
    bundle = tmp_path / f"{run.name}.tar.gz"
    assert made.stdout.strip().splitlines()[-1] == str(bundle)
    readme = subprocess.run(["tar", "-xzOf", str(bundle), f"{run.name}/README.md"], capture_output=True, text=True)
    assert "invoke repro hello --arch sm_90a --backend docker --compile-only" in readme.stdout
    assert invoke(project, "bundle.verify", str(bundle)).returncode == 0

    replayed = invoke(project, "bundle.replay", str(bundle))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "same git commit, tool, backend, image and toolchain" in replayed.stdout
    new = json.loads((project.latest() / "run.json").read_text())
    assert new["environment"]["image_id"] == record["environment"]["image_id"]
    assert new["request"]["compile_only"] is True and new["steps"][0]["outcome"] == "compiled"
