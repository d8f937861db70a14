"""Runner faults against the real Docker engine (issue 12): a gigabyte of output, a container killed
mid-compile, a container without nvcc. Each ends as a fault: the right error and exit code, one line,
bounded memory. The daemon-death row lives in the nightly two-daemon test's style (own dockerd); see
test_daemon_dies_mid_exec below.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import pytest

from gpurepro.archive import build_tar
from second_dockerd import second_dockerd
import yaml

from projects import ROOT, make_project

pytestmark = [pytest.mark.faults, pytest.mark.docker]

TOOLCHAIN = "gpurepro/toolchain:latest"
BASE = "gpurepro/base:bookworm"
GIB = 1 << 30
RSS_LIMIT_MB = 200
HELLO = {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
         "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}}
# host code only: prints a gibibyte whatever its arguments (the preflight-only run included)
GIGABYTE_CU = r"""
#include <cstdio>
#include <cstring>
int main() {
  static char line[1024];
  memset(line, 'x', sizeof line - 1);
  line[sizeof line - 1] = '\n';
  for (int i = 0; i < 1024 * 1024; ++i) fwrite(line, 1, sizeof line, stdout);
  return 0;
}
"""



def _image(docker_client, ref):
    try:
        return docker_client.images.get(ref)
    except Exception:  # noqa: BLE001
        pytest.skip(f"image {ref} not built (`invoke image.base image.build --target toolchain`)")


def _runner(docker_client, name: str, **config_env):
    from gpurepro.config import load_config
    from gpurepro.runners.docker import DockerRunner

    runner = DockerRunner(docker_client, load_config(ROOT / "gpurepro.yaml", env=config_env), container_name=name)
    runner.start()
    return runner


def _cli(project, *args, timeout=900, env=None):
    """`python -m gpurepro ...` in a wrapper that reports the tool's peak RSS (its only child)."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "done = subprocess.run(sys.argv[1:])\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(json.dumps({'peak_rss_mb': peak}), file=open(sys.argv[0] + '.rss', 'w'))\n"
               "sys.exit(done.returncode)\n")
    script = project.path / "rss_wrapper.py"
    script.write_text(wrapper)
    full_env = project.env()
    full_env.update(env or {})
    done = subprocess.run([sys.executable, str(script), sys.executable, "-m", "gpurepro", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    done.peak_rss_mb = json.loads((project.path / "rss_wrapper.py.rss").read_text())["peak_rss_mb"]
    return done




def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _record(project) -> dict:
    return json.loads((project.latest() / "run.json").read_text())


def _assert_junit_error(run: pathlib.Path, case: str, text: str) -> None:
    """junit.xml is valid against the schema and the step is an <error> carrying `text`."""
    import xml.etree.ElementTree as ET

    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema not installed")
    xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd")).validate(str(run / "junit.xml"))
    cases = {c.get("name"): c for c in ET.parse(run / "junit.xml").iter("testcase")}
    error = cases[case].find("error")
    assert error is not None and text in (error.get("message") or "") + (error.text or ""), ET.tostring(cases[case])


# --- a gibibyte of output ----------------------------------------------------------------------------
def test_gigabyte_exec_through_the_docker_runner_stays_small(docker_client, own_container):
    container = own_container(TOOLCHAIN)
    script = f"""
import json, resource, sys
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
import docker
from test_runner_faults import _runner
runner = _runner(docker.from_env(), {container.name!r})
r = runner.exec(["sh", "-c", "head -c {GIB} /dev/zero | tr '\\\\0' x | fold -w 1023"], workdir="/", timeout_s=600)
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size at fork (pytest's, after a long session)
import re
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps(dict(bytes=r.output_bytes, truncated=r.output_truncated, kept=len(r.output), code=r.exit_code,
                      end=r.output[-20:], peak_mb=hwm / 1024)))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "faults"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["code"] == 0 and facts["truncated"]
    assert facts["bytes"] == GIB + GIB // 1023  # fold adds a newline per 1023 bytes
    assert facts["kept"] <= 8 * 1024 * 1024 + 100 and set(facts["end"]) <= {"x", "\n"}
    assert facts["peak_mb"] <= RSS_LIMIT_MB, facts


@pytest.mark.slow
def test_program_printing_a_gigabyte_is_capped_end_to_end(tmp_path, docker_client, own_container):
    container = own_container(TOOLCHAIN)
    project = make_project(tmp_path, steps=[dict(HELLO, id="loud", file="loud.cu", change="prints 1 GiB")])
    (tmp_path / "repros" / "loud.cu").write_text(GIGABYTE_CU)
    done = _cli(project, "repro", "loud", "--arch", "sm_90a", env={"GPUREPRO_CONTAINER": container.name})
    record = _record(project)
    step = record["steps"][0]
    assert step["outcome"] != "infra_error", step
    run_log = project.latest() / "steps" / "loud" / "run.log"
    size = run_log.stat().st_size
    assert size <= 8 * 1024 * 1024 + 4096, size
    assert "bytes omitted ...]" in run_log.read_text()
    assert done.peak_rss_mb <= RSS_LIMIT_MB, (done.peak_rss_mb, done.stderr[-500:])
    print(f"tool peak RSS {done.peak_rss_mb:.0f} MB, run.log {size} bytes, exit {done.returncode}")


# --- the container is killed mid-command ------------------------------------------------------------
def _kill_when(docker_client, container, needle: str, limit_s: float = 120) -> threading.Thread:
    """docker kill the container once a process matching `needle` runs in it."""
    def watch():
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                processes = container.top(ps_args="-eo pid,args")["Processes"] or []
            except Exception:  # noqa: BLE001 - not running (yet or any more)
                processes = []
            if any(needle in " ".join(p) for p in processes):
                container.kill()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_container_killed_mid_exec_is_infrastructure(docker_client, own_container):
    from gpurepro.errors import EXIT_INFRA, ContainerStoppedError

    container = own_container(TOOLCHAIN)
    runner = _runner(docker_client, container.name)
    runner.run_tag = "h12kill"
    watcher = _kill_when(docker_client, container, "sleep 97")
    with pytest.raises(ContainerStoppedError) as info:
        runner.exec(["sleep", "97"], workdir="/", timeout_s=300)
    watcher.join(5)
    line = info.value.one_line()
    assert line.startswith(f"container {container.name} stopped during sleep 97 (killed?)"), line
    assert info.value.exit_code == EXIT_INFRA and "\n" not in line
    # every later command fails the same way at once, and cleanup does not raise
    with pytest.raises(ContainerStoppedError):
        runner.exec(["true"], workdir="/", timeout_s=10)
    runner.remove_dir(f"{runner.work_root()}/x")


@pytest.mark.slow
def test_container_killed_mid_compile_end_to_end(tmp_path, docker_client, own_container):
    container = own_container(TOOLCHAIN)
    # a compile that is still running when the container dies: nvcc behind a long sleep
    wrapper = '#!/bin/sh\n[ "$1" = --version ] || sleep 293\nexec nvcc "$@"\n'  # the probe's --version is quick
    container.put_archive("/usr/local/bin", build_tar({"slow-nvcc": wrapper.encode()}, executable=frozenset({"slow-nvcc"})))
    project = make_project(tmp_path, steps=[HELLO])
    raw = yaml.safe_load(project.config_path.read_text())
    raw["compile"]["nvcc"] = "slow-nvcc"
    project.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    watcher = _kill_when(docker_client, container, "sleep 293")
    done = _cli(project, "repro", "hello", "--arch", "sm_90a", env={"GPUREPRO_CONTAINER": container.name},
                timeout=300)
    watcher.join(5)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    line = _one_line(done.stderr)
    assert f"container {container.name} stopped during slow-nvcc" in line and "(killed?)" in line
    record = _record(project)
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert record["error"].startswith(f"container {container.name} stopped during slow-nvcc"), record["error"]
    assert record["steps"][0]["outcome"] == "infra_error" and "stopped during" in record["steps"][0]["reason"]
    _assert_junit_error(project.latest(), "hello[sm_90a]", "stopped during")


# --- no nvcc in the container --------------------------------------------------------------------
def test_container_without_nvcc_runner(docker_client, own_container):
    from gpurepro.errors import EXIT_INFRA, NvccMissingError

    container = own_container(BASE)
    runner = _runner(docker_client, container.name)
    facts = runner.probe("nvcc")  # kernels.test asks nothing of nvcc
    assert facts.values["nvcc_path"] == ""
    with pytest.raises(NvccMissingError) as info:
        runner.probe("nvcc", require_nvcc=True)
    line = info.value.one_line()
    assert line.startswith(f"nvcc not found in container {container.name} (image {BASE})")
    assert "invoke image.build" in line and "GPUREPRO_IMAGE" in line and "compile.nvcc" in line
    assert info.value.exit_code == EXIT_INFRA
    for tag in ("", "h12tag"):  # with and without the run marker in front of the command
        runner.run_tag = tag
        with pytest.raises(NvccMissingError):
            runner.exec(["nvcc", "-o", "x", "x.cu"], workdir="/", timeout_s=30)


def test_container_without_nvcc_end_to_end(tmp_path, docker_client, own_container):
    container = own_container(BASE)
    project = make_project(tmp_path, steps=[HELLO])
    done = _cli(project, "repro", "hello", "--arch", "sm_90a", env={"GPUREPRO_CONTAINER": container.name},
                timeout=300)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    line = _one_line(done.stderr)
    assert f"nvcc not found in container {container.name} (image {BASE})" in line and "invoke image.build" in line
    record = _record(project)
    assert record["status"] == "failed" and record["steps"][0]["outcome"] == "infra_error"
    assert record["exit_code"] == 3 and record["error"].startswith(f"nvcc not found in container {container.name}")
    _assert_junit_error(project.latest(), "hello[sm_90a]", "nvcc not found")


# --- the Docker daemon dies mid-command (a dockerd of the test's own; never the shared one) ---------
H12_BRIDGE = "gpurepro-h12"
H12_BRIDGE_CIDR = "172.31.251.1/24"


@pytest.fixture
def own_daemon(tmp_path_factory, docker_client):
    """A second dockerd (own socket, data root, exec root, pidfile, bridge) holding the base image."""
    _image(docker_client, BASE)
    with second_dockerd(tmp_path_factory.mktemp("h12d"), bridge=H12_BRIDGE, cidr=H12_BRIDGE_CIDR,
                        docker_client=docker_client, images=(BASE,), client_timeout=120) as daemon:
        yield daemon


@pytest.mark.slow
def test_daemon_dies_mid_exec(own_daemon):
    import signal

    from gpurepro.errors import EXIT_INFRA, DaemonGoneError

    client = own_daemon["client"]
    client.containers.run(BASE, ["sleep", "infinity"], name="h12-daemon-death", detach=True, init=True)
    runner = _runner(client, "h12-daemon-death")
    process = own_daemon["process"]

    def stop_daemon():
        time.sleep(3)
        os.kill(process.pid, signal.SIGTERM)  # as a crash or `systemctl stop docker` would, mid-command

    threading.Thread(target=stop_daemon, daemon=True).start()
    with pytest.raises(DaemonGoneError) as info:
        runner.exec(["sleep", "89"], workdir="/", timeout_s=300)
    process.wait(timeout=60)
    line = info.value.one_line()
    assert line.startswith(f"Docker daemon at unix://{own_daemon['socket']} stopped answering during sleep 89: "), line
    assert "ConnectionError(" not in line and "\n" not in line and info.value.exit_code == EXIT_INFRA
    print(line)


@pytest.mark.slow
def test_daemon_dies_mid_compile_end_to_end(own_daemon, tmp_path):
    """The whole tool against the test's own daemon: the run is marked failed, its step an infra <error>."""
    import signal

    client = own_daemon["client"]
    name = f"h12-daemon-e2e-{uuid.uuid4().hex[:6]}"
    container = client.containers.run(BASE, ["sleep", "infinity"], name=name, detach=True, init=True)
    # the base image has no compiler: an nvcc that answers the probe, then compiles "forever"
    fake = '#!/bin/sh\n[ "$1" = --version ] && { echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; }\nsleep 281\n'
    container.put_archive("/usr/local/bin", build_tar({"nvcc": fake.encode()}, executable=frozenset({"nvcc"})))
    project = make_project(tmp_path, steps=[HELLO])
    process = own_daemon["process"]

    def kill_daemon_mid_compile():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if any("sleep 281" in " ".join(p) for p in container.top(ps_args="-eo pid,args")["Processes"] or []):
                    os.kill(process.pid, signal.SIGTERM)
                    return
            except Exception:  # noqa: BLE001 - not there yet
                pass
            time.sleep(0.3)

    killer = threading.Thread(target=kill_daemon_mid_compile, daemon=True)
    killer.start()
    endpoint = f"unix://{own_daemon['socket']}"
    done = _cli(project, "repro", "hello", "--arch", "sm_90a", timeout=300,
                env={"GPUREPRO_CONTAINER": name, "DOCKER_HOST": endpoint})
    killer.join(5)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr
    line = _one_line(done.stderr)
    assert line.startswith(f"gpurepro: Docker daemon at {endpoint} stopped answering during "), line
    assert "ConnectionError(" not in line
    record = _record(project)
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert record["error"].startswith(f"Docker daemon at {endpoint} stopped answering"), record["error"]
    assert record["steps"][0]["outcome"] == "infra_error"
    _assert_junit_error(project.latest(), "hello[sm_90a]", "stopped answering")
    print(line)
