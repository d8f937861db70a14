"""Real SM120 repro programs compiled in the toolchain container (minutes: each compile is ~1-2 min here)."""
import json
import subprocess
import sys

import pytest

from projects import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_step01_compiles_for_sm120a_and_is_skipped_without_gpu(project_factory, toolchain_image, docker_client):
    project = project_factory(repros=ROOT / "repros")
    done = subprocess.run([sys.executable, "-m", "invoke", "repro", "step01"], cwd=ROOT, env=project.env(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = project.latest()
    record = json.loads((run_dir / "run.json").read_text())
    [step] = record["steps"]
    assert (step["step"], step["arch"], step["outcome"], step["reason"]) == ("step01", "sm_120a", "skipped", "no GPU")
    result = json.loads((run_dir / "steps/step01/result.json").read_text())
    events = {e["event"]: e for e in result["events"]}
    # the host-side preflight ran in the container: SharedStorage against SM120's opt-in capacity
    assert events["preflight"]["smem_capacity_bytes"] == 101376
    assert events["preflight"]["shared_storage_bytes"] <= 101376 and events["preflight"]["fits"] is True
    assert events["config"]["problem_shape_index"] == "int64_t"
    assert result["compile_seconds"] > 10
    assert "-arch=sm_120a" in (run_dir / "steps/step01/compile.log").read_text()
    assert docker_client.containers.get(project.container).attrs["Mounts"] == []
