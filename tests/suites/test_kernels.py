"""`invoke kernels.test`'s engine (gpurepro/suites/kernels.py) without a Docker daemon.

The host backend runs the real pipeline end to end (copy in, probe, pytest, JUnit back, run directory) on a
throwaway project whose tests/kernels holds planted tests; the pieces (JUnit mapping, exit codes, probe
checks, configuration, the vllm-dev wheel pins) are tested on their own.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET

import pytest
import yaml

from gpurepro import images
from gpurepro.config import load_config
from gpurepro.errors import ConfigError, InfraError
from gpurepro.outcomes import CaseResult
from gpurepro.render.junit import build_suite, kernel_testcase
from gpurepro.suites.kernels import (KernelsRequest, check_probe, exit_code_for,
                                    parse_probe, parse_pytest_junit, suite_files)
from projects import ROOT

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema validates JUnit against the Jenkins schema")
SCHEMA = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd"))

PLANTED = '''
import time
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_fails():
    print("evidence line \\x1b[31mred\\x1b[0m")
    assert 2 + 2 == 5, "planted failure"

@pytest.mark.gpu
def test_needs_gpu():
    pytest.skip("CUDA not available: planted skip")

class TestGroup:
    def test_in_class(self):
        pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_setup_error(broken):
    pass

def test_sleeps():
    time.sleep(60)
'''


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not _torch_available(), reason="torch is not installed here (the probe needs it)")


def make_kernels_project(tmp_path: pathlib.Path, tests: dict[str, str]) -> pathlib.Path:
    """A project root with the real kernels/, tests/kernels/conftest.py and the given test files."""
    root = tmp_path / "proj"
    shutil.copytree(ROOT / "kernels", root / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests" / "kernels").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "kernels" / "conftest.py", root / "tests" / "kernels" / "conftest.py")
    for name, text in tests.items():
        (root / "tests" / "kernels" / name).write_text(text)
    raw = yaml.safe_load((ROOT / "gpurepro.yaml").read_text())
    raw["reports_dir"] = str(tmp_path / "reports")
    raw["host"]["workdir"] = str(tmp_path / "hostwork")
    raw["docker"]["container"] = f"gpurepro-test-{uuid.uuid4().hex[:8]}"
    (root / "gpurepro.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "gpurepro.yaml"


def run_host(config_path, **kwargs):
    from gpurepro.suites.kernels import execute

    request = KernelsRequest(backend="host", argv=["test"], **kwargs)
    return execute(load_config(config_path, env={}), request)


def junit_of(run_path: pathlib.Path):
    SCHEMA.validate(str(run_path / "junit.xml"))
    root = ET.parse(run_path / "junit.xml").getroot()
    assert root.tag == "testsuite"
    cases = {}
    for case in root.iter("testcase"):
        assert set(case.attrib) <= {"name", "classname", "time"}  # DESIGN: nothing else on <testcase>
        cases[(case.get("classname"), case.get("name"))] = case
    return root, cases


# --- the real engine on the host backend ----------------------------------------------------------------
@needs_torch
def test_planted_results_are_recorded(tmp_path):
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    outcome = run_host(config, keyword="not sleeps")
    assert outcome.exit_code == 1 and outcome.status == "complete"
    run = outcome.run.path
    assert (tmp_path / "reports" / "latest").resolve() == run
    root, cases = junit_of(run)
    assert root.get("name").startswith("kernels@")
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "1")
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["backend"] == "host" and props["pytest_exit_code"] == "1" and props["torch_version"]
    mod = "kernels.test_planted"
    assert list(cases[(mod, "test_passes")]) == []
    failure = cases[(mod, "test_fails")].find("failure")
    assert "planted failure" in failure.get("message") and "assert 2 + 2 == 5" in failure.text
    assert "evidence line" in cases[(mod, "test_fails")].findtext("system-out")
    assert cases[(mod, "test_needs_gpu")].find("skipped").get("message").endswith("CUDA not available: planted skip")
    assert "fixture broke" in cases[(mod, "test_setup_error")].find("error").get("message") + \
        cases[(mod, "test_setup_error")].find("error").text
    assert (mod, "TestGroup.test_in_class") in cases

    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "kernels" and record["status"] == "complete" and record["exit_code"] == 1
    assert record["kernels"]["counts"] == {"passed": 2, "failed": 1, "error": 1, "skipped": 1}
    assert {f["test"] for f in record["kernels"]["failed"]} == {f"{mod}::test_fails", f"{mod}::test_setup_error"}
    assert record["kernels"]["files"]["tests/kernels/test_planted.py"] == \
        __import__("hashlib").sha256(PLANTED.encode()).hexdigest()
    assert record["reproduce"] == "invoke kernels.test --backend host --keyword 'not sleeps'"
    summary = (run / "summary.md").read_text()
    assert f"`{mod}::test_fails` (failed): " in summary and "| kernels.test_planted | 2 | 1 | 1 | 1 |" in summary
    log = (run / "kernels" / "pytest.log").read_text()
    assert log.startswith("$ ") and "\x1b[31mred" in log  # the raw log keeps what the test printed
    ET.parse(run / "kernels" / "pytest-junit.xml")  # pytest's own file, as it wrote it
    probe = json.loads((run / "kernels" / "probe.json").read_text())
    import torch

    assert probe["torch"] == torch.__version__ and probe["cuda_available"] == torch.cuda.is_available()
    assert not any((tmp_path / "hostwork").iterdir())  # the work directory is removed


@needs_torch
def test_all_pass_selection_exits_0(tmp_path):
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    outcome = run_host(config, keyword="passes or in_class or needs_gpu")
    assert outcome.exit_code == 0
    assert dict(outcome.counts) == {"passed": 2, "skipped": 1}


@needs_torch
@pytest.mark.parametrize("kwargs", [{"keyword": "no_test_has_this_name"}, {"marker": "gpu and ("}])
def test_bad_or_empty_selection_is_bad_input(tmp_path, kwargs):
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    outcome = run_host(config, **kwargs)
    assert outcome.exit_code == 2
    assert json.loads((outcome.run.path / "run.json").read_text())["exit_code"] == 2


@needs_torch
def test_collection_error_is_a_failure_not_infra(tmp_path):
    config = make_kernels_project(tmp_path, {"test_broken.py": "import a_module_that_does_not_exist\n"})
    outcome = run_host(config)
    assert outcome.exit_code == 1
    _, cases = junit_of(outcome.run.path)
    assert "a_module_that_does_not_exist" in cases[("kernels.test_broken", "collection")].find("error").text


@needs_torch
def test_timeout_stops_the_session_and_fails(tmp_path):
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    outcome = run_host(config, keyword="sleeps", timeout_s=4)
    assert outcome.exit_code == 1
    _, cases = junit_of(outcome.run.path)
    assert cases[("kernels.session", "pytest")].find("failure").get("message").startswith("timeout: pytest ran past 4 s")


def _wrapper(tmp_path, name, body):
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_python_without_torch_is_infra(tmp_path):
    # a Python without site-packages: the suite would otherwise skip everything and "pass"
    python = _wrapper(tmp_path, "python-bare", f'exec {sys.executable} -S "$@"')
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    with pytest.raises(InfraError) as err:
        run_host(config, python=python)
    assert err.value.exit_code == 3
    assert "lacks hypothesis, pytest, torch" in err.value.one_line() and "install-cpu-torch.sh" in err.value.one_line()
    run = (tmp_path / "reports" / "latest").resolve()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 3 and "lacks hypothesis" in record["error"]
    _, cases = junit_of(run)  # CI sees an <error>, not an empty (green) suite
    assert "lacks hypothesis" in cases[("kernels.session", "pytest")].find("error").get("message")


@needs_torch
def test_torch_that_does_not_import_is_infra(tmp_path):
    # installed but broken (e.g. a CUDA wheel without its libraries): found by the probe, fails in the session
    fake = tmp_path / "brokentorch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libcudnn.so.9: cannot open shared object file')\n")
    python = _wrapper(tmp_path, "python-broken-torch", f'PYTHONPATH={fake.parent} exec {sys.executable} "$@"')
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    with pytest.raises(InfraError, match="torch does not import: ImportError: libcudnn.so.9"):
        run_host(config, python=python)


def test_missing_python_is_infra(tmp_path):
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    with pytest.raises(InfraError, match="not found"):
        run_host(config, python=str(tmp_path / "no-such-python"))
    assert json.loads(((tmp_path / "reports" / "latest") / "run.json").read_text())["status"] == "failed"


def test_app_rejects_bad_flags():
    from gpurepro import app
    from gpurepro.errors import UsageError

    with pytest.raises(UsageError, match="unknown backend"):
        app.kernels_test(backend="podman")
    with pytest.raises(UsageError, match="--timeout"):
        app.kernels_test(backend="host", timeout=-5)


# --- the pieces -----------------------------------------------------------------------------------------
def test_suite_files_are_the_kernels_and_their_tests():
    files = suite_files(ROOT)
    assert "kernels/nvfp4/quantize.py" in files and "tests/kernels/conftest.py" in files
    assert "tests/kernels/test_nvfp4_swizzle.py" in files and "pytest.ini" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or f.startswith("gpurepro/")]
    assert files["kernels/nvfp4/format.py"] == (ROOT / "kernels/nvfp4/format.py").read_bytes()


PYTEST_JUNIT = b"""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1"
failures="1" skipped="1" tests="5" time="1.0" timestamp="2026-01-01T00:00:00" hostname="h">
<testcase classname="tests.kernels.test_nvfp4_quantize" name="test_a[cpu]" file="tests/kernels/x.py" line="3"
 time="0.5"/>
<testcase classname="tests.kernels.test_nvfp4_quantize" name="test_b[cuda]" time="0.0"><skipped
 type="pytest.skip" message="CUDA not available">tests/kernels/x.py:9: CUDA not available</skipped></testcase>
<testcase classname="tests.kernels.test_nvfp4_linear.TestX" name="test_c" time="0.1"><failure
 message="AssertionError: bad&#10;second line">trace</failure><system-out>out</system-out>
 <system-err>err</system-err></testcase>
<testcase classname="" name="tests.kernels.test_broken" time="0.0"><error message="collection failure">E
 ImportError</error></testcase>
</testsuite></testsuites>"""


def test_pytest_junit_maps_to_kernels_classnames():
    cases = parse_pytest_junit(PYTEST_JUNIT)
    got = [(c.classname, c.name, c.outcome) for c in cases]
    assert got == [
        ("kernels.test_nvfp4_quantize", "test_a[cpu]", "passed"),
        ("kernels.test_nvfp4_quantize", "test_b[cuda]", "skipped"),
        ("kernels.test_nvfp4_linear", "TestX.test_c", "failed"),
        ("kernels.test_broken", "collection", "error"),
    ]
    assert cases[1].message == "CUDA not available" and cases[2].output == "out\nerr" and cases[0].seconds == 0.5
    with pytest.raises(ValueError):
        parse_pytest_junit(b"<html/>")
    with pytest.raises(ValueError):
        parse_pytest_junit(b"not xml")


def test_skip_reasons_paths_and_empty_captures():
    data = b"""<testsuites><testsuite name="pytest" tests="2" errors="0" failures="0" skipped="2">
<testcase classname="" name="tests.kernels.test_router_compile" time="0.000"><skipped message="collection skipped"
>('/w/run1/kernels/tests/kernels/test_router_compile.py', 15, 'Skipped: nvidia-cutlass-dsl is not installed')</skipped>
</testcase>
<testcase classname="tests.kernels.test_a" name="test_b[cuda]" time="0"><skipped type="pytest.skip" message="no CUDA"
>/w/run1/kernels/tests/kernels/test_a.py:31: no CUDA</skipped><system-out>------ Captured Log ------

------ Captured Out ------
</system-out></testcase></testsuite></testsuites>"""
    router, cuda = parse_pytest_junit(data, workdir="/w/run1/kernels")
    assert (router.classname, router.name, router.message) == (
        "kernels.test_router_compile", "collection", "nvidia-cutlass-dsl is not installed")
    assert "('tests/kernels/test_router_compile.py', 15" in router.detail  # relative to the copied tree
    assert cuda.detail == "tests/kernels/test_a.py:31: no CUDA" and cuda.output == ""


def test_written_suite_is_valid_and_shows_control_characters(tmp_path):
    from gpurepro.render.junit import write_suite

    cases = parse_pytest_junit(PYTEST_JUNIT) + [
        CaseResult("kernels.test_x", "test_ctrl", "failed", "bell \x07 here", "trace \x1b[0m", 0.25, "out \x00 nul")]
    suite = build_suite("kernels@h", [kernel_testcase(c) for c in cases], timestamp="2026-01-01T00:00:00",
                        hostname="h", properties={"torch_version": "2.13.0+cpu", "odd": "a\x01b"})
    write_suite(suite, tmp_path / "junit.xml")
    root, parsed = junit_of(tmp_path)
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "2", "1", "1")
    ctrl = parsed[("kernels.test_x", "test_ctrl")]
    assert ctrl.find("failure").get("message") == "bell \\x07 here"
    assert ctrl.find("failure").text == "trace \\x1b[0m" and ctrl.findtext("system-out") == "out \\x00 nul"
    assert parsed[("kernels.test_nvfp4_linear", "TestX.test_c")].find("failure").get("message") == \
        "AssertionError: bad second line"  # one line
    assert {p.get("name"): p.get("value") for p in root.iter("property")}["odd"] == "a\\x01b"


@pytest.mark.parametrize("code, outcomes, selected, expected", [
    (0, ["passed", "skipped"], False, 0),
    (0, [], False, 0),
    (1, ["passed", "failed"], False, 1),
    (2, ["error"], False, 1),  # collection error: the tests' fault
    (1, ["error"], False, 1),
    (4, [], True, 2),  # usage error
    (5, [], True, 2),  # the selection matched nothing
    (5, [], False, 3),  # nothing collected although nothing was deselected
    (3, [], False, 3),  # pytest internal error
    (2, ["passed"], False, 3),  # interrupted with nothing failing
    (None, ["failed"], False, 1),  # timeout (session case)
])
def test_exit_codes(code, outcomes, selected, expected):
    cases = [CaseResult("kernels.m", f"t{i}", o) for i, o in enumerate(outcomes)]
    request = KernelsRequest(keyword="x" if selected else None)
    assert exit_code_for(code, cases, request) == expected


def test_probe_parsing_and_checks():
    line = '@@kernels-probe {"python": "3.11.2", "torch": "2.13.0", "pytest": "9", "hypothesis": "6", "missing": {}}'
    probe = parse_probe("noise\n" + line + "\n")
    assert probe["torch"] == "2.13.0"
    check_probe(probe, "", "container x", "docker")  # nothing missing: no error
    assert parse_probe("no marker") is None and parse_probe("@@kernels-probe {broken") is None
    missing = dict(probe, missing={"torch": "ModuleNotFoundError: No module named 'torch'"})
    with pytest.raises(InfraError) as err:
        check_probe(missing, "", "container vllm-dev (gpurepro/toolchain:latest)", "docker")
    assert "lacks torch" in err.value.one_line() and "image.build --target vllm-dev" in err.value.one_line()
    with pytest.raises(InfraError, match="Python did not run"):
        check_probe(None, "bash: python3: command not found", "container x", "docker")
    # rich is optional: its absence is recorded, not fatal
    check_probe(dict(probe, missing={"rich": "ModuleNotFoundError"}), "", "x", "docker")


# --- configuration, task wiring, image decision -------------------------------------------------------------
def test_kernels_config_section(tmp_path):
    raw = yaml.safe_load((ROOT / "gpurepro.yaml").read_text())
    assert load_config(ROOT / "gpurepro.yaml", env={}).kernels.timeout_s == raw["kernels"]["timeout_s"]
    raw.pop("kernels")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "a.yaml", env={}).kernels.timeout_s == 1800  # the section is optional
    raw["kernels"] = {"timeout_s": "soon"}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="kernels.timeout_s: expected a positive integer"):
        load_config(tmp_path / "b.yaml", env={})
    raw["kernels"] = {"timeot_s": 5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="kernels.timeot_s: unknown key"):
        load_config(tmp_path / "c.yaml", env={})


def test_default_container_image_has_torch():
    # the decision: one vllm-dev container for repros and kernel tests, made from the vllm-dev target
    cfg = load_config(ROOT / "gpurepro.yaml", env={})
    assert cfg.docker.image == cfg.docker.images["vllm-dev"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "FROM toolchain AS vllm-dev\n" in dockerfile  # vllm-dev keeps everything repros need


def test_task_and_cli_are_wired():
    sys.path.insert(0, str(ROOT))
    try:
        import tasks
    finally:
        sys.path.remove(str(ROOT))
    assert "kernels.test" in tasks.ns.task_names
    assert tasks.ns.collections["image"].tasks["build"].body.__wrapped__.__defaults__ == ("vllm-dev", None)
    from gpurepro.cli import build_parser

    args = build_parser().parse_args(["kernels.test", "--backend", "host", "-k", "swizzle", "-m", "not gpu"])
    assert (args.command, args.backend, args.keyword, args.marker) == ("kernels.test", "host", "swizzle", "not gpu")


def test_vllm_dev_pins():
    pins = {p["name"].lower(): p for p in images.pinned_requirements(ROOT / "docker/requirements/vllm-dev.txt")}
    assert pins["torch"]["version"] == "2.13.0+cpu"
    assert {"pytest", "hypothesis", "numpy", "sortedcontainers", "pluggy", "sympy", "mpmath"} <= set(pins)
    assert images.TARGET_REQUIREMENTS["vllm-dev"] == ["vllm-dev.txt"]


def test_local_wheels_are_taken_by_hash(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    good = local / "torch-9.9.9+cpu-cp311-cp311-linux_x86_64.whl"
    good.write_bytes(b"the right bytes")
    (local / "torch-9.9.9+cpu-cp312-cp312-linux_x86_64.whl").write_bytes(b"other bytes, same name prefix")
    (local / "typing_extensions-1.0-py3-none-any.whl").write_bytes(b"te")
    pins = [{"name": "torch", "version": "9.9.9+cpu", "sha": images.sha256_file(good)},
            {"name": "typing-extensions", "version": "1.0", "sha": images.sha256_file(local / "typing_extensions-1.0-py3-none-any.whl")},
            {"name": "numpy", "version": "1.0", "sha": "0" * 64}]
    house = tmp_path / "house"
    house.mkdir()
    assert images.copy_local_wheels(house, pins, [local], log=lambda m: None) == 2
    assert sorted(p.name for p in house.iterdir()) == [good.name, "typing_extensions-1.0-py3-none-any.whl"]
    assert [p["name"] for p in images.missing_wheels(house, pins)] == ["numpy"]
    env = {images.WHEEL_DIRS_ENV: os.pathsep.join([str(local), str(tmp_path / "absent")])}
    assert images.local_wheel_dirs(env) == [local]


@needs_torch
def test_run_is_locked_while_it_runs_and_records_a_redacted_environment(tmp_path, monkeypatch):
    import threading
    import time

    from gpurepro.run import lock as runlock

    monkeypatch.setenv("GPUREPRO_TEST_API_TOKEN", "s3cr3t-value")
    config = make_kernels_project(tmp_path, {"test_planted.py": PLANTED})
    seen = []

    def watch():  # reports.prune and bundle.create must see the run as in use until it ends
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen:
            for lock in (tmp_path / "reports").glob(f"*/{runlock.LOCK_NAME}"):
                seen.append(runlock.holder(lock.parent))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    outcome = run_host(config, keyword="test_passes")
    watcher.join()
    assert seen and seen[0] is not None and seen[0]["pid"] == __import__("os").getpid()
    assert runlock.holder(outcome.run.path) is None  # released at the end
    record = json.loads((outcome.run.path / "run.json").read_text())
    assert record["env_vars"]["GPUREPRO_TEST_API_TOKEN"] == "<redacted>"
    assert "s3cr3t-value" not in (outcome.run.path / "run.json").read_text()
