"""Real SM120 repro programs compiled in the toolchain container (minutes: each compile is ~1-2 min here).

One engine run compiles every step these tests look at (two at a time), so the file costs one batch of
compiles: step01 (builds), step06 (must fail with CUTLASS' static_assert), the step13/step14 pair and the
step20/step21 layout-dump pair. Without a GPU each built step is `skipped: no GPU` and its host-side records
(config, preflight, layout dumps) still come from `--preflight-only` in the container.
"""
import json
import re
import subprocess
import sys

import pytest

from gpurepro.chain import diff_layouts
from projects import ROOT, assert_device_part, make_project

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STEPS = ["step01", "step06", "step13", "step14", "step20", "step21"]
STATIC_ASSERT = "Incorrect SfVectorSize for MX_F4F6F8 is deduced."


def _invoke(project, *args, timeout=1800):
    env = {**project.env(), "COLUMNS": "400"}  # wide enough that rich never wraps a layout name
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, toolchain_image, docker_client):
    """(project, completed process, run dir, {step: run.json entry}) of one sm_120a run over STEPS."""
    project = make_project(tmp_path_factory.mktemp("real"), repros=ROOT / "repros")
    try:
        done = _invoke(project, "repro", ",".join(STEPS), "--arch", "sm_120a", "--jobs", "2")
        run_dir = project.latest()
        record = json.loads((run_dir / "run.json").read_text())
        steps = {s["step"]: s for s in record["steps"]}
        for step in steps.values():  # the GPU the run saw, for assert_device_part
            step["gpu_arch"] = record["environment"].get("gpu_arch")
        yield project, done, run_dir, steps
    finally:
        try:
            docker_client.containers.get(project.container).remove(force=True)
        except Exception:  # noqa: BLE001 - never created, or already gone
            pass


def _events(run_dir, step):
    return json.loads((run_dir / "steps" / step / "result.json").read_text())["events"]


def _one(events, name):
    [event] = [e for e in events if e["event"] == name]
    return event


def test_batch_matches_the_manifest(batch):
    _, done, _, steps = batch
    # every outcome is what the manifest expects for sm_120a without a GPU (compile_error or not run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(steps) == sorted(STEPS)


def test_step01_compiles_for_sm120a_and_is_skipped_without_gpu(batch, docker_client):
    project, _, run_dir, steps = batch
    step = steps["step01"]
    assert step["arch"] == "sm_120a"
    assert_device_part(step, step["gpu_arch"], "sm_120a")
    result = json.loads((run_dir / "steps/step01/result.json").read_text())
    preflight = _one(result["events"], "preflight")
    # the host-side preflight ran in the container: SharedStorage against SM120's opt-in capacity
    assert preflight["smem_capacity_bytes"] == 101376
    assert preflight["shared_storage_bytes"] <= 101376 and preflight["fits"] is True
    assert _one(result["events"], "config")["problem_shape_index"] == "int64_t"
    assert result["compile_seconds"] > 10
    assert "-arch=sm_120a" in (run_dir / "steps/step01/compile.log").read_text()
    assert docker_client.containers.get(project.container).attrs["Mounts"] == []


def test_step06_fails_to_compile_with_cutlass_static_assert(batch):
    _, _, run_dir, steps = batch
    step = steps["step06"]
    assert step["outcome"] == "compile_error"
    assert STATIC_ASSERT in step["reason"]
    assert step["verdict"] == "match"  # the manifest expects compile_error for sm_120a
    log = (run_dir / "steps/step06/compile.log").read_text()
    assert re.search(r"sm1xx_common\.inl\(\d+\): error: static assertion failed with \"Incorrect SfVectorSize", log)
    assert not (run_dir / "steps/step06/layout.json").exists()


def test_step13_step14_differ_only_in_the_problem_shape_index(batch):
    _, _, run_dir, steps = batch
    configs = {}
    for step in ("step13", "step14"):
        assert_device_part(steps[step], steps[step]["gpu_arch"], "sm_120a")
        events = _events(run_dir, step)
        configs[step] = {k: v for k, v in _one(events, "config").items() if k != "step"}
        assert _one(events, "preflight")["fits"] is True
    assert configs["step13"]["problem_shape_index"] == "int"
    assert configs["step14"]["problem_shape_index"] == "int64_t"
    differing = {k for k in configs["step13"] if configs["step13"][k] != configs["step14"].get(k)}
    assert differing == {"problem_shape_index"}


def test_step20_step21_layout_dumps_and_their_diff(batch):
    project, _, run_dir, steps = batch
    layouts = {}
    for step in ("step20", "step21"):
        assert_device_part(steps[step], steps[step]["gpu_arch"], "sm_120a")
        path = run_dir / "steps" / step / "layout.json"
        layouts[step] = json.loads(path.read_text())
        # per group: SFA, SFB, strides A/B/D, problem shape; every record with its bytes
        assert len(layouts[step]) == 6 * 3
        for record in layouts[step]:
            assert record["bytes"] * 2 == len(record["bytes_hex"]) > 0
    assert [r["name"] for r in layouts["step20"]] == [r["name"] for r in layouts["step21"]]

    done = _invoke(project, "layout.diff", "step20", "step21", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "step20/layout.json" in out.replace("\n", "") and "step21/layout.json" in out.replace("\n", "")
    rows = diff_layouts(layouts["step20"], layouts["step21"])
    differing = [r.name for r in rows if r.status != "same"]
    assert f"{len(differing)} of {len(rows)} layouts differ" in out
    for name in ("layout_sfa[0]", "stride_b[2]", "problem_shape[1]"):
        assert name in out
    # what the diff reports follows from the bytes: compare them independently
    for a, b in zip(layouts["step20"], layouts["step21"]):
        same = all(a.get(k) == b.get(k) for k in set(a) | set(b) if k != "event")
        assert same == (a["name"] not in differing), a["name"]
