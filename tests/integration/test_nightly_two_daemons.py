"""`invoke ci.nightly` against two real Docker daemons at once, one of them killed halfway through.

The second daemon gets its own socket, data root, exec root, pidfile and bridge (a daemon started with
`--bridge none` deletes the host's docker0, breaking the first daemon), and is stopped by its pid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from projects import ROOT, device_part
from second_dockerd import second_dockerd

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BRIDGE = "gpurepro-ci2"
BRIDGE_CIDR = "172.31.250.1/24"
HELLO = [{"id": f"hello{i}", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
          "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}} for i in range(4)]
BROKEN = {"id": "broken", "file": "broken.cu", "parent": None, "change": "a static_assert", "targets": ["sm_90a"],
          "compile": {"sm_90a": "compile_error"}, "expect": {"sm_90": "skipped"}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def toolchain_ref(docker_client):
    from gpurepro.config import load_config

    ref = load_config(ROOT / "gpurepro.yaml").docker.images["toolchain"]
    try:
        docker_client.images.get(ref)
    except Exception:  # noqa: BLE001
        pytest.skip(f"image {ref} not built (`invoke image.base image.build --target toolchain`)")
    return ref


@pytest.fixture(scope="module")
def second_daemon(tmp_path_factory, docker_client, toolchain_ref):
    """A second dockerd of our own, holding the toolchain image; stopped by its pid afterwards."""
    with second_dockerd(tmp_path_factory.mktemp("dockerd2"), bridge=BRIDGE, cidr=BRIDGE_CIDR,
                        docker_client=docker_client, images=(toolchain_ref,)) as daemon:
        daemon["client"].close()
        yield daemon


def _kill_when_busy(url: str, pid: int, container: str, done: threading.Event, killed: dict) -> None:
    """SIGTERM the daemon a few seconds after its target's container is up: mid-way through the steps."""
    import docker

    client = docker.DockerClient(base_url=url, timeout=30)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not done.is_set():
        try:
            if client.containers.get(container).status == "running":
                time.sleep(4)
                os.kill(pid, signal.SIGTERM)
                killed["at"] = time.monotonic()
                return
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.5)


def test_two_daemons_one_killed_halfway(project_factory, second_daemon, toolchain_ref, toolchain_image):
    project = project_factory(steps=HELLO + [BROKEN])
    skip_caches = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for part in ("kernels", "tests/kernels"):  # what kernels.test copies into the container
        shutil.copytree(ROOT / part, project.path / part, ignore=skip_caches)
    (project.path / "docker").symlink_to(ROOT / "docker")  # the build context of the local target's image build
    targets = project.path / "targets.yaml"
    targets.write_text(f"""
targets:
  - {{name: local, docker: "unix:///var/run/docker.sock", labels: [cpu]}}
  - {{name: second, docker: "{second_daemon['url']}", image: "{toolchain_ref}", kernels: false, build: false}}
""")
    env = project.env()
    done, killed = threading.Event(), {}
    killer = threading.Thread(target=_kill_when_busy,
                              args=(second_daemon["url"], second_daemon["pid"], project.container, done, killed))
    killer.start()
    try:
        started = time.monotonic()
        finished = subprocess.run([sys.executable, "-m", "invoke", "ci.nightly", "--targets-file", str(targets),
                                   "--jobs", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        took = time.monotonic() - started
    finally:
        done.set()
        killer.join()
    output = finished.stdout + finished.stderr
    assert "at" in killed, f"the second daemon was never seen busy, so never killed:\n{output}"
    assert finished.returncode == 3, output
    assert second_daemon["process"].wait(timeout=180) is not None, output  # it really went away mid-run

    nightly_dir = (project.reports / "nightly" / "latest").resolve()
    record = json.loads((nightly_dir / "nightly.json").read_text())
    by_name = {t["target"]["name"]: t for t in record["targets"]}
    local, second = by_name["local"], by_name["second"]
    assert local["status"] == "complete" and local["error"] is None, output
    # hello* compile for sm_90a: not run without a GPU or on another arch; run and matched on an sm_90 device
    ran = device_part(local["device"], "sm_90a") == "runs"
    assert [e["classification"] for e in local["entries"]] == ["match" if ran else "not_run"] * 4 + ["match"], \
        local["entries"]
    # kernels.test ran in the local target's container (the default image has torch), and passed
    assert local["kernels"]["exit_code"] == 0 and local["kernels"]["counts"].get("passed", 0) > 50, local["kernels"]
    assert second["kernels"] is None
    assert second["status"] == "infra_error", second
    infra = [e for e in second["entries"] if e["classification"] == "infra"]
    assert infra or second["error"], second  # the steps after the kill have no verdict, and say why
    assert all(e["result"]["outcome"] == "infra_error" for e in infra)

    summary = (nightly_dir / "summary.md").read_text()
    assert "## Infrastructure errors" in summary and "second" in summary.split("## Counts")[0]
    assert f"| local | {local['device'] or '-'} | complete |" in summary and "| second |" in summary
    assert "| infra_error |" in summary.split("## Counts")[1]
    suites = {s.get("name"): s for s in __import__("xml.etree.ElementTree").etree.ElementTree.parse(
        nightly_dir / "junit.xml").getroot().iter("testsuite")}
    assert set(suites) == {"local", "second"} and int(suites["second"].get("errors")) >= 1
    assert suites["local"].get("errors") == "0" and suites["local"].get("failures") == "0"
    assert any(c.get("classname", "").startswith("kernels.") for c in suites["local"].iter("testcase"))
    # the local target's image build ran (Docker's cache makes it quick); the second used its loaded image
    local_log = (nightly_dir / "targets" / "local" / "console.log").read_text()
    assert "(cached)" in local_log and "Step 1/" in local_log, local_log[-2000:]
    assert "used as it is (no build)" in (nightly_dir / "targets" / "second" / "console.log").read_text()
    # each target ran into its own run directory
    assert all((nightly_dir / run / "run.json").is_file() for run in local["runs"] + second["runs"])
    print(f"nightly across two daemons, one killed: {took:.0f} s")
