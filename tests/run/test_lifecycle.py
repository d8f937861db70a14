"""One lifecycle for every kind of run, tested with the fake runners (no Docker, no torch, no GPU):
the lock while it runs, the record, JUnit and the final status on each way out."""
from __future__ import annotations

import json
import pathlib
import xml.etree.ElementTree as ET

import pytest

from fake_runner import STEPS, FakeKernelsRunner, FakeRunner
from gpurepro.config import load_config
from gpurepro.errors import InfraError, InterruptedRun
from gpurepro.outcomes import Outcome, Verdict
from gpurepro.render.console import Console
from gpurepro.run import RunRecord
from gpurepro.run import lock as runlock
from gpurepro.suites import kernels as kernels_suite
from gpurepro.suites.repro import RunRequest, execute
from projects import make_project

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema validates JUnit against the Jenkins schema")
SCHEMA = xmlschema.XMLSchema(str(pathlib.Path(__file__).parents[1] / "data" / "junit-10.xsd"))


@pytest.fixture
def config(tmp_path):
    project = make_project(tmp_path, steps=STEPS)
    root = project.path
    (root / "kernels").mkdir()
    (root / "kernels" / "__init__.py").write_text("")
    (root / "tests" / "kernels").mkdir(parents=True)
    (root / "tests" / "kernels" / "test_x.py").write_text("def test_x():\n    pass\n")
    return load_config(project.config_path, env={})


def kernels_run(config, runner):
    return kernels_suite.execute(config, kernels_suite.KernelsRequest(backend="docker", argv=["invoke", "kernels.test"]),
                                 console=Console(), runner=runner)


def latest(config) -> pathlib.Path:
    return (config.reports_dir / "latest").resolve()


def test_kernels_run_holds_the_lock_and_records_junit_and_status(config):
    seen = []
    runner = FakeKernelsRunner(during_pytest=lambda: seen.append(runlock.holder(latest(config))))
    outcome = kernels_run(config, runner)
    assert seen and seen[0] is not None  # in use while pytest runs
    assert runlock.holder(outcome.run.path) is None  # released at the end
    assert outcome.exit_code == 1 and outcome.status == "complete"
    record = RunRecord.read(outcome.run.path)
    assert record.kind == "kernels" and record.status == "complete" and record.exit_code == 1
    assert record.kernels.counts == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert record.kernels.failed[0]["test"] == "kernels.test_nvfp4_format::test_scales[cpu]"
    SCHEMA.validate(str(outcome.run.path / "junit.xml"))
    root = ET.parse(outcome.run.path / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    assert "1 failed" in (outcome.run.path / "summary.md").read_text()
    assert any(path.endswith(outcome.run.run_id) for path in runner.removed)  # the runner's work dir is removed


def test_kernels_interrupt_marks_the_run_and_leaves_an_error_case(config):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        kernels_run(config, FakeKernelsRunner(during_pytest=interrupt))
    run = latest(config)
    record = RunRecord.read(run)
    assert record.status == "interrupted" and record.exit_code == 130 and record.finished_at
    assert runlock.holder(run) is None
    root = ET.parse(run / "junit.xml").getroot()
    assert root.get("errors") == "1" and "interrupted" in root.find("testcase/error").get("message")


def test_kernels_without_torch_is_infra_and_the_run_failed(config):
    probe = ('@@kernels-probe {"python": "3.11.2", "pytest": "9", "hypothesis": "6", '
             '"missing": {"torch": "ModuleNotFoundError: No module named \'torch\'"}}')
    with pytest.raises(InfraError, match="lacks torch"):
        kernels_run(config, FakeKernelsRunner(probe=probe))
    record = RunRecord.read(latest(config))
    assert record.status == "failed" and record.exit_code == 3 and "lacks torch" in record.error
    assert ET.parse(latest(config) / "junit.xml").getroot().find("testcase/error").get("type") == "infra_error"


def test_repro_interrupt_with_parallel_compiles_marks_unfinished_steps_interrupted(config):
    def interrupt(argv):
        return argv[0] == "nvcc" and "broken.cu" in argv

    interrupt.exc = KeyboardInterrupt()
    with pytest.raises(InterruptedRun):
        execute(config, RunRequest(steps=["hello", "broken"], jobs=2, argv=["invoke", "repro"]),
                console=Console(), runner=FakeRunner(fail_on=interrupt))
    run = latest(config)
    record = RunRecord.read(run)
    assert record.status == "interrupted" and record.exit_code == 130
    by_step = {s.step: s for s in record.steps}
    assert by_step["broken"].outcome == "interrupted" and by_step["broken"].verdict == "infra"
    root = ET.parse(run / "junit.xml").getroot()
    SCHEMA.validate(str(run / "junit.xml"))
    assert int(root.get("errors")) >= 1 and root.get("failures") == "0"
    assert json.loads((run / "steps" / "broken" / "result.json").read_text())["outcome"] == "interrupted"


def test_repro_runner_that_dies_fails_the_run_with_one_error(config):
    class Gone(InfraError):
        fatal = True

    def die(argv):
        return argv[0] == "nvcc"

    die.exc = Gone("container vllm-dev stopped during nvcc (killed?)")
    with pytest.raises(InfraError):
        execute(config, RunRequest(steps=["hello", "broken"], argv=["invoke", "repro"]), console=Console(),
                runner=FakeRunner(fail_on=die))
    record = RunRecord.read(latest(config))
    assert record.status == "failed" and "stopped during nvcc" in record.error
    assert [s.outcome for s in record.steps] == ["infra_error", "infra_error"]
    assert all(s.verdict == Verdict.INFRA.value for s in record.steps)


def test_infra_step_fails_the_run(config):
    def fail(argv):
        return argv[0] == "cuobjdump"

    fail.exc = InfraError("cuobjdump failed on hello: boom")
    outcome = execute(config, RunRequest(steps=["hello"], argv=["invoke", "repro"]), console=Console(),
                      runner=FakeRunner(fail_on=fail, gpu_smi="NVIDIA H100, 9.0, 580"))
    assert outcome.results[0].outcome is Outcome.INFRA_ERROR and outcome.exit_code == 3
    assert outcome.status == "failed" and RunRecord.read(outcome.run.path).error.startswith("hello[sm_90a]")
