"""`invoke repro` through the warm engine against the real Docker engine: the same record as in-process, and
Ctrl-C still ends the run as interrupted (the client forwards the signal to the engine's child)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from gpurepro.archive import build_tar
from projects import ROOT

pytestmark = pytest.mark.docker

STEPS = [{"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
          "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}}]


@pytest.fixture
def runtime(tmp_path):
    directory = tmp_path / "xdg"
    directory.mkdir(mode=0o700)
    yield directory
    subprocess.run([sys.executable, "-m", "gpurepro.warm", "stop"], cwd=ROOT, check=False,
                   env={**os.environ, "XDG_RUNTIME_DIR": str(directory)})


def env_of(project, runtime, warm_on=True):
    return {**project.env(), "XDG_RUNTIME_DIR": str(runtime), "GPUREPRO_WARM": "1" if warm_on else "0"}


def invoke(project, runtime, *args, warm_on=True):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env_of(project, runtime, warm_on),
                          capture_output=True, text=True, timeout=600)


def record(project) -> dict:
    return json.loads((project.latest() / "run.json").read_text())


def start_server(project, runtime):
    invoke(project, runtime, "repro.list")
    deadline = time.monotonic() + 30
    while not list((runtime / "gpurepro").glob("*.pid")):
        assert time.monotonic() < deadline, "no warm engine started"
        time.sleep(0.1)


def test_a_repro_through_the_warm_engine_records_what_in_process_records(project_factory, toolchain_image, runtime):
    project = project_factory(steps=STEPS)
    invoke(project, runtime, "repro", "hello", warm_on=False)  # compiles: both runs below are hits
    alone = invoke(project, runtime, "repro", "hello", warm_on=False)
    assert alone.returncode == 0, alone.stderr
    before = record(project)
    start_server(project, runtime)
    through = invoke(project, runtime, "repro", "hello")
    assert through.returncode == 0, through.stderr
    after = record(project)
    assert after["run_id"] != before["run_id"]
    assert [(s["step"], s["outcome"], s["reason"], s["cache"]["status"]) for s in after["steps"]] == \
           [(s["step"], s["outcome"], s["reason"], s["cache"]["status"]) for s in before["steps"]]
    differs = {k for k in after["env_vars"].keys() | before["env_vars"].keys()
               if after["env_vars"].get(k) != before["env_vars"].get(k)}
    assert after["command"] == before["command"] and differs == {"GPUREPRO_WARM"}  # the client's own environment
    assert after["git"] == before["git"] and after["status"] == "complete"
    assert through.stdout.replace(after["run_id"], "RUN") == alone.stdout.replace(before["run_id"], "RUN")
    lines = [line for log in (runtime / "gpurepro").glob("*.log") for line in log.read_text().splitlines()]
    assert any("task=run exit=0" in line for line in lines), lines


def test_ctrl_c_reaches_the_run_in_the_warm_engine(project_factory, toolchain_image, runtime, docker_client):
    project = project_factory(steps=STEPS)
    assert invoke(project, runtime, "repro", "hello", warm_on=False).returncode == 0  # creates the container
    container = docker_client.containers.get(project.container)
    # a compiler that sleeps first, beside the real one (the probe's --version stays quick)
    bindir = container.exec_run(["sh", "-c", "dirname $(command -v nvcc)"]).output.decode().strip()
    wrapper = f'#!/bin/sh\n[ "$1" = --version ] || sleep 263\nexec {bindir}/nvcc "$@"\n'
    container.put_archive(bindir, build_tar({"warm-slow-nvcc": wrapper.encode()},
                                            executable=frozenset({"warm-slow-nvcc"})))
    raw = yaml.safe_load(project.config_path.read_text())
    raw["compile"]["nvcc"] = "warm-slow-nvcc"
    project.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    start_server(project, runtime)
    # Ctrl-C as from a terminal: a test run started in the background inherits SIGINT ignored, and the client
    # (like the command in-process) would then ignore it
    client = subprocess.Popen([sys.executable, "-m", "invoke", "repro", "hello", "--no-cache"], cwd=ROOT,
                              env=env_of(project, runtime), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while "sleep 263" not in " ".join(" ".join(p) for p in container.top(ps_args="-eo pid,args")["Processes"] or []):
            assert time.monotonic() < deadline and client.poll() is None, client.communicate()
            time.sleep(0.2)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:  # the test failed before the run ended: nothing of it may outlive the test
            client.kill()
            client.wait()
    assert client.returncode == 130, out + err
    assert "marked interrupted" in err
    assert record(project)["status"] == "interrupted"
    lines = [line for log in (runtime / "gpurepro").glob("*.log") for line in log.read_text().splitlines()]
    assert any("task=run exit=130" in line for line in lines), lines  # it ran in the engine
