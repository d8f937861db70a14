"""On a GPU host without Docker (the H100 we have): the host backend end to end, for real.

Needs nvcc and cuobjdump on PATH and the FlashInfer/CUTLASS headers (GPUREPRO_FLASHINFER or
`invoke toolchain.headers`). Skipped with the reason where there is no GPU.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from projects import ROOT, make_project

pytestmark = pytest.mark.gpu


def gpurepro(project, *args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "gpurepro", "repro", *args, "--backend", "host"], cwd=ROOT,
                          env=project.env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def headers():
    from gpurepro.config import load_config

    root = pathlib.Path(load_config(ROOT / "gpurepro.yaml").host.flashinfer)
    if not (root / "3rdparty/cutlass/include/cutlass/version.h").is_file():
        pytest.skip(f"FlashInfer/CUTLASS headers not laid out at {root} (`invoke toolchain.headers`)")
    return root


def gpu_cc() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.split()
    return out[0] if out else ""


def test_tiny_program_runs_and_passes(tmp_path):
    cc = gpu_cc().replace(".", "")
    steps = [{"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": [f"sm_{cc}"],
              "expect": {f"sm_{cc}": "pass"}}]
    project = make_project(tmp_path, steps=steps)
    os.makedirs(tmp_path / "fi/3rdparty/cutlass/include/cutlass", exist_ok=True)  # host pre-flight wants headers
    (tmp_path / "fi/3rdparty/cutlass/include/cutlass/version.h").write_text("#define CUTLASS_MAJOR 0\n")
    env_project = project.env()
    env_project["GPUREPRO_FLASHINFER"] = str(tmp_path / "fi")
    done = subprocess.run([sys.executable, "-m", "gpurepro", "repro", "hello", "--backend", "host"], cwd=ROOT,
                          env=env_project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((project.latest() / "run.json").read_text())
    assert record["steps"][0]["outcome"] == "pass", record["steps"]
    assert record["environment"]["gpu_compute_capability"] == gpu_cc()


def test_sm90_control_passes_and_step01_is_skipped_unrun(tmp_path, headers):
    if gpu_cc() != "9.0":
        pytest.skip(f"this test is about an SM90 device; this one is {gpu_cc()}")
    project = make_project(tmp_path, repros=ROOT / "repros")
    done = gpurepro(project, "sm90_control", "step01")
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = project.latest()
    record = json.loads((run_dir / "run.json").read_text())
    steps = {s["step"]: s for s in record["steps"]}
    assert steps["sm90_control"]["outcome"] == "pass" and steps["sm90_control"]["verdict"] == "match"
    assert steps["step01"]["outcome"] == "skipped"
    assert steps["step01"]["reason"].startswith("no image for sm_90")
    run_log = (run_dir / "steps/step01/run.log").read_text()
    assert run_log.startswith("$ ./step01 --preflight-only")  # the device part never ran
    events = json.loads((run_dir / "steps/step01/result.json").read_text())["events"]
    preflight = next(e for e in events if e["event"] == "preflight")
    assert preflight["smem_capacity_bytes"] == 101376
    assert record["environment"]["gpu_arch"] == "sm_90"
