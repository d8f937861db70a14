"""Run-level faults (issue 12) through `invoke`, against the real engine: the reports directory on a full disk
(before the run and mid-run), Ctrl-C with two compiles running, a program that hangs in its preflight-only run,
and two runs at once from one checkout sharing the reports directory and the container.

Each asserts the exit code, that stderr is one line without a traceback, the run record's status and error,
JUnit (`<error>` per unfinished step, valid against tests/data/junit-10.xsd), no stray lock, and no process or
work directory left in the container.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from gpurepro.archive import build_tar
import yaml

from projects import ROOT, device_part, make_project

pytestmark = pytest.mark.faults
docker = pytest.mark.docker

TOOLCHAIN = "gpurepro/toolchain:latest"
XSD = ROOT / "tests" / "data" / "junit-10.xsd"
LOCK = ".gpurepro.lock"
_RSS_WRAPPER = ("import json, resource, subprocess, sys\n"
                "done = subprocess.run(sys.argv[2:])\n"
                "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
                "open(sys.argv[1], 'w').write(json.dumps({'peak_rss_mb': peak}))\n"
                "sys.exit(done.returncode)\n")



def step(step_id: str, file: str = "hello.cu", **over) -> dict:
    return {"id": step_id, "file": file, "parent": None, "change": f"{step_id} (fault test)", "targets": ["sm_90a"],
            "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}, **over}


def set_config(project, **sections) -> None:
    raw = yaml.safe_load(project.config_path.read_text())
    for section, values in sections.items():
        raw[section].update(values)
    project.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def invoke(project, *args, env=None, timeout=900):
    """`invoke ARGS` from the checkout in the project's environment; `.peak_rss_mb`: the tool's peak RSS."""
    wrapper = project.path / "rss_wrapper.py"
    wrapper.write_text(_RSS_WRAPPER)
    report = project.path / f"rss-{uuid.uuid4().hex[:6]}.json"
    done = subprocess.run([sys.executable, str(wrapper), str(report), sys.executable, "-m", "invoke", *args],
                          cwd=ROOT, env={**project.env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    done.peak_rss_mb = json.loads(report.read_text())["peak_rss_mb"]
    print(f"exit {done.returncode}, peak RSS {done.peak_rss_mb:.0f} MB, stderr {done.stderr.strip()!r}")
    return done


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def run_dirs(reports: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def record_of(run: pathlib.Path) -> dict:
    return json.loads((run / "run.json").read_text())


def junit_cases(run: pathlib.Path) -> dict[str, ET.Element]:
    """JUnit checked against the schema; testcase name -> element."""
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema not installed")
    xmlschema.XMLSchema(str(XSD)).validate(str(run / "junit.xml"))
    tree = ET.parse(run / "junit.xml")
    return {case.get("name"): case for case in tree.iter("testcase")}


def container_exec(docker_client, name: str, command: str) -> str:
    return docker_client.containers.get(name).exec_run(["sh", "-c", command]).output.decode(errors="replace")




@pytest.fixture
def project(tmp_path, docker_client, toolchain_image):
    """A throwaway project (its own reports, cache and container name); the container it makes is removed."""
    made = make_project(tmp_path, steps=[step("hello")])
    yield made
    try:
        docker_client.containers.get(made.container).remove(force=True)
    except Exception:  # noqa: BLE001 - never created
        pass


# --- reports on a full disk -------------------------------------------------------------------------------
@pytest.fixture
def tiny_reports(project):
    """Mount a small tmpfs as the project's reports directory: mount(size) -> path; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a tiny tmpfs needs root (mount -t tmpfs)")
    mounted = []

    def mount(size: str) -> pathlib.Path:
        project.reports.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(project.reports)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(project.reports)
        return project.reports

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def fill(directory: pathlib.Path) -> None:
    """Write until the filesystem is full."""
    with open(directory / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


@docker
def test_reports_full_before_the_run_removes_its_directory(project, tiny_reports):
    reports = tiny_reports("64k")
    fill(reports)
    done = invoke(project, "repro", "hello", "--arch", "sm_90a")
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    line = one_line(done.stderr)
    assert line.startswith(f"gpurepro: cannot start a run under {reports}: No space left on device"), line
    assert "free disk space" in line
    assert sorted(p.name for p in reports.iterdir()) == ["filler"]  # no run directory, no lock, no latest


@docker
def test_reports_full_mid_run_marks_the_run_failed(project, tiny_reports):
    # room for run.json and the step's sources, not for its binary (an sm_90a hello is ~1 MB)
    reports = tiny_reports("256k")
    done = invoke(project, "repro", "hello", "--arch", "sm_90a")
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    line = one_line(done.stderr)
    assert line.startswith("gpurepro: cannot write hello's results under "), line
    assert "No space left on device" in line
    runs = run_dirs(reports)
    assert len(runs) == 1
    record = record_of(runs[0])
    assert record["status"] == "failed" and "No space left on device" in record["error"], record
    assert record["exit_code"] == 3
    assert not (runs[0] / LOCK).exists()
    assert not [p for p in runs[0].rglob(".*.tmp")]  # no half-written file
    assert (reports / "latest").resolve() == runs[0]


# --- Ctrl-C with two compiles running -------------------------------------------------------------------
SLOW_NVCC = "h12-slow-nvcc"


def install_slow_nvcc(container, sleep_s: int) -> None:
    """An nvcc `sleep_s` slower (its --version, the probe's, stays quick), beside the real one so that the
    toolchain's CUDA home, found from nvcc's path, stays the same."""
    bindir = container.exec_run(["sh", "-c", "dirname $(command -v nvcc)"]).output.decode().strip()
    wrapper = f'#!/bin/sh\n[ "$1" = --version ] || sleep {sleep_s}\nexec {bindir}/nvcc "$@"\n'
    container.put_archive(bindir, build_tar({SLOW_NVCC: wrapper.encode()}, executable=frozenset({SLOW_NVCC})))


def slow_compiles(docker_client, own_container, project, sleep_s: int):
    """The test's own container whose compiles take `sleep_s` longer."""
    container = own_container(TOOLCHAIN)
    install_slow_nvcc(container, sleep_s)
    set_config(project, compile={"nvcc": SLOW_NVCC, "memory_gb_per_job": 1})
    return container


def processes(container) -> list[str]:
    container.reload()
    if container.status != "running":
        return []
    return [" ".join(p) for p in container.top(ps_args="-eo pid,args")["Processes"] or []]


def wait_for(predicate, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@docker
def test_interrupt_with_two_compiles_running(project, docker_client, own_container):
    manifest = yaml.safe_load((project.path / "repros" / "manifest.yaml").read_text())
    manifest["steps"] = [step("first"), step("second", "plain.cu")]
    (project.path / "repros" / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    container = slow_compiles(docker_client, own_container, project, 271)
    env = {**project.env(), "GPUREPRO_CONTAINER": container.name}
    # -X faulthandler: a tool that has not ended 120 s after Ctrl-C is sent SIGABRT, and every thread's stack
    # lands in the failure
    # Ctrl-C as from a terminal: a test run started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python keeps an ignored SIGINT ignored
    tool = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "invoke", "repro", "first,second", "--arch",
                             "sm_90a", "--jobs", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: sum("sleep 271" in p for p in processes(container)) == 2, 120, "two compiles")
        tool.send_signal(signal.SIGINT)
        try:
            out, err = tool.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            tool.send_signal(signal.SIGABRT)
            out, err = tool.communicate(timeout=30)
            pytest.fail(f"Ctrl-C did not end the run in 120 s; its threads:\n{err[-6000:]}\n{out[-2000:]}")
    finally:
        if tool.poll() is None:
            tool.kill()
    print(f"exit {tool.returncode}, stderr {err.strip()!r}")
    assert tool.returncode == 130, out[-2000:] + err
    run = project.latest()
    assert one_line(err) == f"gpurepro: interrupted: the run's commands were stopped; run {run} marked interrupted"
    record = record_of(run)
    assert record["status"] == "interrupted" and record["exit_code"] == 130
    assert [(s["step"], s["outcome"]) for s in record["steps"]] == [("first", "interrupted"), ("second", "interrupted")]
    assert all(s["reason"] == "interrupted during compiling" for s in record["steps"]), record["steps"]
    cases = junit_cases(run)
    assert sorted(cases) == ["first[sm_90a]", "second[sm_90a]"]
    for case in cases.values():
        assert case.find("error") is not None, ET.tostring(case)
    assert not (run / LOCK).exists()
    # nothing of the run left in the container: no compile, no marked process, no work directory
    left = [p for p in processes(container) if "sleep 271" in p or record["run_id"] in p]
    assert left == [], left
    workdir = f"/workspace/gpurepro/{record['run_id']}"
    assert container_exec(docker_client, container.name, f"test -e {workdir} && echo left || echo gone").strip() == "gone"


# --- a program that hangs in its preflight-only run -----------------------------------------------------
HANG_CU = r"""
#include <unistd.h>
// hangs whatever its arguments, --preflight-only included (host code only)
int main() { for (;;) pause(); }
"""


@docker
def test_program_hanging_in_preflight_is_a_timeout(project, docker_client):
    manifest = {"version": 1, "steps": [step("hang", "hang.cu")]}
    (project.path / "repros" / "hang.cu").write_text(HANG_CU)
    (project.path / "repros" / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    set_config(project, run={"timeout_s": 4})
    done = invoke(project, "repro", "hang", "--arch", "sm_90a")
    run = project.latest()
    record = record_of(run)
    result = record["steps"][0]
    assert result["outcome"] == "timeout", result
    if device_part(record["environment"].get("gpu_arch"), "sm_90a") != "runs":
        assert result["reason"].startswith("preflight-only run: "), result
    seconds = json.loads((run / "steps" / "hang" / "result.json").read_text())["run_seconds"]
    assert 4 <= seconds < 30, seconds
    # a timeout is an outcome judged like any other: `pass` was expected, so the step departed (exit 1)
    assert (result["verdict"], result["expected"]) == ("departed", "pass")
    assert done.returncode == 1 and record["status"] == "complete" and record["exit_code"] == 1
    assert junit_cases(run)["hang[sm_90a]"].find("failure") is not None
    assert "timeout" in (run / "summary.md").read_text()
    left = [p for p in processes(docker_client.containers.get(project.container)) if "./hang" in p]
    assert left == [], left


# --- two runs at once from one checkout -----------------------------------------------------------------
def start_tool(project, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env={**project.env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_tool(tool: subprocess.Popen, timeout: float = 600):
    try:
        out, err = tool.communicate(timeout=timeout)
    finally:
        if tool.poll() is None:
            tool.kill()
    return tool.returncode, out, err


@docker
def test_two_runs_at_once_create_one_container_and_both_complete(project, docker_client):
    """Side by side: separate run directories and work directories; the container is created once."""
    manifest = {"version": 1, "steps": [step("hello"), step("plain", "plain.cu")]}
    (project.path / "repros" / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    lock_dir = project.path / "locks"
    env = {"GPUREPRO_LOCK_DIR": str(lock_dir)}
    tools = [start_tool(project, "repro", name, "--arch", "sm_90a", env=env) for name in ("hello", "plain")]
    ends = [finish_tool(tool) for tool in tools]
    for code, out, err in ends:
        assert code == 0 and err.strip() == "", out[-2000:] + err
    runs = run_dirs(project.reports)
    assert len(runs) == 2
    records = {record_of(run)["steps"][0]["step"]: record_of(run) for run in runs}
    assert sorted(records) == ["hello", "plain"]
    for name, record in records.items():
        assert record["status"] == "complete" and record["exit_code"] == 0, record
        assert record["steps"][0]["outcome"] not in ("infra_error", "interrupted"), record["steps"]
        assert not (project.reports / record["run_id"] / LOCK).exists()
    # one container, made once: both runs saw the same one
    assert len({r["environment"]["container_id"] for r in records.values()}) == 1
    assert project.latest() in runs
    assert len(docker_client.containers.list(all=True, filters={"name": f"^/{project.container}$"})) == 1


@docker
def test_recreating_the_container_waits_for_the_run_using_it(project, docker_client, tmp_path):
    """A run that must recreate the shared container (its image changed) waits, with one line on stdout, until
    the run using the old one has ended; that run is never cut off."""
    env = {"GPUREPRO_LOCK_DIR": str(project.path / "locks")}
    first = invoke(project, "repro", "hello", "--arch", "sm_90a", env=env)  # creates the container
    assert first.returncode == 0, first.stderr
    container = docker_client.containers.get(project.container)
    install_slow_nvcc(container, 23)
    slow_config = project.path / "slow.yaml"
    raw = yaml.safe_load(project.config_path.read_text())
    raw["compile"]["nvcc"] = SLOW_NVCC
    slow_config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the slow run compiles `plain` (not in the cache yet); the other wants the container from another image
    manifest = {"version": 1, "steps": [step("hello"), step("plain", "plain.cu")]}
    (project.path / "repros" / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    slow = start_tool(project, "repro", "plain", "--arch", "sm_90a", env={**env, "GPUREPRO_CONFIG": str(slow_config)})
    wait_for(lambda: any("sleep 23" in p for p in processes(container)), 120, "the slow compile")
    other = start_tool(project, "repro", "hello", "--arch", "sm_90a", env={**env, "GPUREPRO_IMAGE": TOOLCHAIN})
    slow_code, slow_out, slow_err = finish_tool(slow)
    other_code, other_out, other_err = finish_tool(other)
    assert slow_code == 0 and slow_err.strip() == "", slow_out[-2000:] + slow_err
    assert other_code == 0 and other_err.strip() == "", other_out[-2000:] + other_err
    waited = [line for line in other_out.splitlines() if line.startswith("waiting for")]
    assert waited == [f"waiting for the other run(s) using container {project.container} to finish before "
                      "recreating it: its image changed (Ctrl-C to stop)"], other_out
    records = sorted((record_of(run) for run in run_dirs(project.reports)), key=lambda r: r["started_at"])
    assert [r["status"] for r in records] == ["complete"] * 3
    slow_record = next(r for r in records if r["steps"][0]["step"] == "plain")
    assert slow_record["steps"][0]["outcome"] not in ("infra_error", "interrupted"), slow_record["steps"]
    assert records[-1]["environment"]["image"] == TOOLCHAIN
    assert records[-1]["environment"]["container_id"] != slow_record["environment"]["container_id"]
    assert docker_client.containers.get(project.container).labels["gpurepro.image-ref"] == TOOLCHAIN


# --- bad input: exit 2 before any work (no run directory, no container) -----------------------------------
def _bad_manifest(path: pathlib.Path, raw: str) -> None:
    data = yaml.safe_load(raw)
    data["steps"][0]["patches"] = ["/etc/hostname"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("args, spoil, expected", [
    (["--arch", "sm_999"], None, "gpurepro: unknown arch sm_999; known: "),
    (["--jobs", "-1"], None, "gpurepro: --jobs -1: expected a whole number >= 1 ("),
    (["--jobs", "abc"], None, "gpurepro: --jobs abc: expected a whole number >= 1 ("),
    ([], lambda m: m.write_bytes(m.read_bytes() + b"# caf\xe9\n"), "manifest.yaml: not UTF-8: byte 0xe9 at offset "),
    ([], lambda m: _bad_manifest(m, m.read_text()), "manifest.yaml: steps.hello.patches: "),
], ids=["arch-sm_999", "jobs-negative", "jobs-abc", "manifest-not-utf8", "patch-outside-patches"])
def test_bad_input_is_exit_2_before_any_work(tmp_path, args, spoil, expected):
    project = make_project(tmp_path, steps=[step("hello")])
    if spoil is not None:
        spoil(project.path / "repros" / "manifest.yaml")
    done = subprocess.run([sys.executable, "-m", "invoke", "repro", "hello", *args], cwd=ROOT, env=project.env(),
                          capture_output=True, text=True, timeout=120)
    print(f"exit {done.returncode}, stderr {done.stderr.strip()!r}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # a manifest with two problems in one key prints a line for each (docs/contracts.md, Exit codes)
    assert 1 <= len(lines) <= 2 and all(line.startswith("gpurepro: ") for line in lines), lines
    assert expected in lines[0], lines
    assert not project.reports.exists()  # nothing was started


def test_disk_full_for_the_final_record_leaves_no_run_looking_complete_or_in_progress(tmp_path):
    """The disk fills up during the run (another process): the final run.json still says `failed`, or the run
    directory is gone; never a lock, never the header's `interrupted` of a run that is over."""
    from fake_runner import FakeRunner
    from gpurepro.config import load_config
    from gpurepro.errors import InfraError
    from gpurepro.render.console import Console
    from gpurepro.run import open_run

    if os.geteuid() != 0:
        pytest.skip("a tiny tmpfs needs root (mount -t tmpfs)")
    project = make_project(tmp_path, steps=[step("hello")])
    project.reports.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(project.reports)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        config = load_config(project.config_path, env={})

        def finish(run):
            (run.path / "summary.md").write_text("x" * 8192)  # the suite's outputs, on the nearly full disk

        with pytest.raises(InfraError) as info:
            with open_run(config, kind="repro", request={}, runner=FakeRunner(), argv=["invoke", "repro"],
                          console=Console(), finish=finish):
                fill(project.reports)
        assert "No space left on device" in info.value.one_line()
        runs = run_dirs(project.reports)
        if runs:
            record = record_of(runs[0])
            assert record["status"] == "failed" and record["exit_code"] == 3, record
            assert "No space left on device" in record["error"]
            assert not (runs[0] / LOCK).exists()
            print("run.json rewritten failed:", record["error"])
        else:
            assert not (project.reports / "latest").is_symlink()
            print("run directory removed")
    finally:
        subprocess.run(["umount", str(project.reports)], check=False)
