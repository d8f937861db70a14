"""`invoke kernels.test` against the real Docker engine and the vllm-dev image (no mock of the daemon)."""
import json
import pathlib
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET

import pytest
import yaml

from projects import ROOT

pytestmark = pytest.mark.docker

PLANTED = '''
def test_passes():
    assert True

def test_fails():
    assert 6 * 7 == 43, "planted failure"
'''


def _image(docker_client, target):
    from gpurepro.config import load_config

    image = load_config(ROOT / "gpurepro.yaml", env={}).docker.images[target]
    try:
        docker_client.images.get(image)
    except Exception:  # noqa: BLE001 - not built: nothing to test against
        pytest.skip(f"image {image} not built (`invoke image.base image.build --target {target}` builds it)")
    return image


@pytest.fixture(scope="module")
def vllm_dev_image(docker_client):
    return _image(docker_client, "vllm-dev")


@pytest.fixture
def containers(docker_client):
    """Container names for this test; removed afterwards (a test's containers never outlive it)."""
    names = []

    def new() -> str:
        names.append(f"gpurepro-test-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield new
    for name in names:
        try:
            docker_client.containers.get(name).remove(force=True)
        except Exception:  # noqa: BLE001 - never created
            pass


def make_project(tmp_path: pathlib.Path, container: str, planted: str | None = None) -> pathlib.Path:
    """A project root with kernels/ and tests/kernels/ (the real tests, or conftest + a planted file)."""
    root = tmp_path / "proj"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "kernels", root / "kernels", ignore=ignore)
    if planted is None:
        shutil.copytree(ROOT / "tests" / "kernels", root / "tests" / "kernels", ignore=ignore)
    else:
        (root / "tests" / "kernels").mkdir(parents=True)
        shutil.copy(ROOT / "tests" / "kernels" / "conftest.py", root / "tests" / "kernels")
        (root / "tests" / "kernels" / "test_planted.py").write_text(planted)
    raw = yaml.safe_load((ROOT / "gpurepro.yaml").read_text())
    raw["docker"]["container"] = container
    raw["reports_dir"] = str(tmp_path / "reports")
    (root / "gpurepro.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "gpurepro.yaml"


def invoke(config: pathlib.Path, *args, env=None, timeout=900):
    import os

    full_env = dict(os.environ, GPUREPRO_CONFIG=str(config), PYTHONPATH=str(ROOT))
    for key in ("GPUREPRO_REPORTS", "GPUREPRO_CONTAINER", "GPUREPRO_IMAGE"):
        full_env.pop(key, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "invoke", "kernels.test", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def latest(config: pathlib.Path) -> pathlib.Path:
    return (config.parent.parent / "reports" / "latest").resolve()


def junit_cases(run: pathlib.Path):
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema validates JUnit against the Jenkins schema")
    xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd")).validate(str(run / "junit.xml"))
    root = ET.parse(run / "junit.xml").getroot()
    return root, list(root.iter("testcase"))


def test_kernel_suite_runs_in_the_container(tmp_path, vllm_dev_image, containers, docker_client):
    name = containers()
    config = make_project(tmp_path, name)
    done = invoke(config)
    assert done.returncode == 0, done.stdout + done.stderr
    run = latest(config)
    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "kernels" and record["status"] == "complete" and record["backend"] == "docker"
    assert record["environment"]["image"] == vllm_dev_image and record["environment"]["container"] == name
    assert record["kernels"]["probe"]["torch"].startswith("2.13.0")
    counts = record["kernels"]["counts"]
    assert counts["failed"] == counts["error"] == 0 and counts["passed"] >= 100
    root, cases = junit_cases(run)
    classnames = {c.get("classname") for c in cases}
    assert classnames >= {"kernels.test_layer_debugger", "kernels.test_nvfp4_format", "kernels.test_nvfp4_linear",
                          "kernels.test_nvfp4_quantize", "kernels.test_nvfp4_swizzle"}
    assert classnames == {f"kernels.{p.stem}" for p in (ROOT / "tests" / "kernels").glob("test_*.py")}
    skipped = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    assert all(s.get("message") and s.get("message") != "collection skipped" for s in skipped)  # each says why
    cuda_cases = [c for c in cases if "[cuda" in c.get("name")]
    assert cuda_cases  # the GPU variants are collected everywhere
    if not record["kernels"]["probe"]["cuda_available"]:  # and say why they did not run
        assert all("CUDA not available" in c.find("skipped").get("message") for c in cuda_cases)
    assert (run / "kernels" / "pytest.log").read_text().count(" passed") >= 1
    # copied in, not mounted; the run's work directory is gone afterwards
    container = docker_client.containers.get(name)
    assert container.attrs["Mounts"] == [] and not container.attrs["HostConfig"].get("Binds")
    left = container.exec_run(["ls", "/workspace/gpurepro"]).output.decode()
    assert record["run_id"] not in left


def test_planted_failure_in_the_container(tmp_path, vllm_dev_image, containers):
    config = make_project(tmp_path, containers(), planted=PLANTED)
    done = invoke(config, "--keyword", "passes or fails")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED kernels.test_planted::test_fails: AssertionError: planted failure" in done.stdout
    _, cases = junit_cases(latest(config))
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}
    assert "planted failure" in by_name[("kernels.test_planted", "test_fails")].find("failure").get("message")
    assert list(by_name[("kernels.test_planted", "test_passes")]) == []


def test_image_without_torch_is_infra(tmp_path, docker_client, containers):
    toolchain = _image(docker_client, "toolchain")
    config = make_project(tmp_path, containers(), planted=PLANTED)
    done = invoke(config, env={"GPUREPRO_IMAGE": toolchain})
    assert done.returncode == 3, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("gpurepro: container ") and "lacks hypothesis, pytest, torch" in line
    assert "image.build --target vllm-dev" in line
    record = json.loads((latest(config) / "run.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 3
