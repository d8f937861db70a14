"""`invoke repro` against the real Docker engine and the toolchain image (no mock of the daemon)."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import docker
import pytest
import yaml

from projects import ROOT, assert_device_part

pytestmark = pytest.mark.docker

STEPS = [
    {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
    {"id": "broken", "file": "broken.cu", "parent": "hello", "change": "SF vector size 16", "targets": ["sm_120a"],
     "compile": {"sm_120a": "compile_error"}, "expect": {"sm_120": "unknown"}},
    {"id": "plain", "file": "plain.cu", "parent": None, "change": "no markers", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
]


def invoke(project, *args, env=None, timeout=900):
    full_env = project.env()
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def project(project_factory, toolchain_image):
    return project_factory(steps=STEPS)


def test_repro_in_container_without_gpu(project, docker_client):
    done = invoke(project, "repro", "hello,broken,plain")
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = project.latest()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["backend"] == "docker"
    assert record["environment"]["cutlass_version"] == "4.5.0"
    assert record["environment"]["flashinfer_version"] == "0.7.2"
    assert record["environment"]["nvcc_version"].startswith("release 13.0")
    assert record["environment"]["image_id"].startswith("sha256:")
    outcomes = {s["step"]: (s["outcome"], s["reason"]) for s in record["steps"]}
    gpu = record["environment"].get("gpu_arch")  # where the container sees a GPU, the sm_90a steps may run
    for step in record["steps"]:
        if step["step"] in ("hello", "plain"):
            assert_device_part(step, gpu, "sm_90a")
    assert outcomes["broken"] == ("compile_error", "static_assert: Incorrect SfVectorSize for MX_F4F6F8 is deduced.")
    # the preflight-only run still produced the host-side records
    hello = run_dir / "steps" / "hello"
    assert json.loads((hello / "layout.json").read_text())[0]["bytes_hex"] == "2a000000"
    result = json.loads((hello / "result.json").read_text())
    assert [e["event"] for e in result["events"]][:2] == ["config", "preflight"]
    assert (hello / "hello").stat().st_size > 0 and (hello / "hello.cu").is_file()
    assert "-arch=sm_90a" in (hello / "compile.log").read_text()
    ET.parse(run_dir / "junit.xml")
    assert "| broken | sm_120a | compile_error | compile_error | match |" in (run_dir / "summary.md").read_text()

    container = docker_client.containers.get(project.container)
    assert container.attrs["Mounts"] == []
    assert not container.attrs["HostConfig"]["Privileged"]
    assert not container.attrs["HostConfig"].get("Binds")
    assert container.labels["gpurepro.managed"] == "true"
    # the run's work directory inside the container is gone; artifacts live in the report
    code, _ = container.exec_run(["test", "-e", f"/workspace/gpurepro/{run_dir.name}"])
    assert code != 0


def test_second_run_reuses_container(project, docker_client):
    first = invoke(project, "repro", "plain")
    assert first.returncode == 0, first.stderr
    container_id = docker_client.containers.get(project.container).id
    assert "created container" in first.stdout
    second = invoke(project, "repro", "plain")
    assert second.returncode == 0, second.stderr
    assert "created container" not in second.stdout
    assert docker_client.containers.get(project.container).id == container_id


def test_stopped_container_is_restarted_and_changed_image_recreated(project, docker_client):
    assert invoke(project, "repro", "plain").returncode == 0
    container = docker_client.containers.get(project.container)
    container.stop(timeout=1)
    done = invoke(project, "repro", "plain")
    assert done.returncode == 0 and "starting stopped container" in done.stdout
    assert docker_client.containers.get(project.container).id == container.id
    # same name, made by gpurepro from an image that is no longer the configured one
    container.remove(force=True)
    image = docker_client.images.get("gpurepro/base:bookworm")
    docker_client.containers.run(image.id, ["sleep", "infinity"], name=project.container, detach=True,
                                 labels={"gpurepro.managed": "true", "gpurepro.image-id": image.id})
    done = invoke(project, "repro", "plain")
    assert done.returncode == 0 and "its image changed" in done.stdout
    assert docker_client.containers.get(project.container).image.id != image.id


def test_users_own_container_is_used_as_is(project, docker_client, toolchain_image):
    own = docker_client.containers.run(toolchain_image, ["sleep", "infinity"], name=project.container, detach=True)
    done = invoke(project, "repro", "plain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not created by gpurepro" in done.stdout
    again = docker_client.containers.get(project.container)
    assert again.id == own.id and "gpurepro.managed" not in again.labels


def test_unknown_step_is_one_line_exit_2_and_touches_nothing(project, docker_client):
    done = invoke(project, "repro", "step99")
    assert done.returncode == 2
    assert done.stderr.strip() == ("gpurepro: unknown step 'step99' (known steps include: hello, broken, plain; "
                                   "`invoke repro.list` shows all)")
    assert not project.reports.exists()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(project.container)


def test_malformed_manifest_and_config(project):
    manifest = project.path / "repros" / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["steps"][0]["expect"]["sm_90"] = "passed"
    manifest.write_text(yaml.safe_dump(data))
    done = invoke(project, "repro", "hello")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "steps.hello.expect.sm_90: unknown outcome 'passed'" in done.stderr
    project.config_path.write_text(project.config_path.read_text().replace("timeout_s: 120", "timeout_s: soon"))
    done = invoke(project, "repro", "hello")
    assert done.returncode == 2 and "run.timeout_s: expected a positive integer, got 'soon'" in done.stderr
    assert not project.reports.exists()


def test_docker_down_is_one_line_exit_3(project, tmp_path, docker_client):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    done = invoke(project, "repro", "hello", "--backend", "docker", env=env)
    assert done.returncode == 3
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("gpurepro: Docker daemon not reachable") and "--backend host" in line
    assert not project.reports.exists()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(project.container)


def test_python_m_gpurepro_is_the_same_engine(project):
    env = project.env()
    done = subprocess.run([sys.executable, "-m", "gpurepro", "repro", "plain", "hello"], cwd=project.path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((project.latest() / "run.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["plain", "hello"]
    assert record["command"][-2:] == ["plain", "hello"]
