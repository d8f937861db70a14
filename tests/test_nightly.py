"""Nightly CI across targets, with in-memory runners: targets, reruns, changed vs flaky, the merged report."""
import json
import pathlib
import xml.etree.ElementTree as ET

import pytest

from projects import make_project
from fake_runner import STEPS, FakeRunner
from gpurepro import app
from gpurepro.config import load_config
from gpurepro.errors import ConfigError, DockerUnavailableError, UsageError
from gpurepro.nightly import (CHANGED, FLAKY, INFRA, MATCH, Target, classify_pair, load_reports, load_targets,
                              merge_reports, nightly, select_targets)
from gpurepro.outcomes import Outcome, StepResult, Verdict

H100 = "NVIDIA H100 80GB HBM3, 9.0, 580.1"
MISMATCH_RUN = "\n".join([
    '@@repro {"event":"check","max_abs_err":3.0,"mismatches":7,"checked":64}',
    '@@repro {"event":"result","outcome":"mismatch","reason":"7 of 64 outputs differ"}',
])
SCHEMA = pathlib.Path(__file__).parent / "data" / "junit-10.xsd"


@pytest.fixture
def config(tmp_path):
    return load_config(make_project(tmp_path, steps=STEPS).config_path, env={})


def runners(*scripts):
    """A make_runner that hands out one FakeRunner per pipeline run, from the given scripts in order."""
    made = []

    def make(cfg, target, log):
        kwargs = scripts[min(len(made), len(scripts) - 1)]
        if isinstance(kwargs, Exception):
            raise kwargs
        made.append(FakeRunner(**kwargs))
        return made[-1]

    make.made = made
    return make


def fake_kernels(*cases, exit_code=None):
    """A run_kernels that records a kernels.test run directory with the given (classname, name, outcome) cases."""
    from gpurepro.outcomes import CaseResult
    from gpurepro.run import RunDirectory
    from gpurepro.suites.kernels import KernelsOutcome

    def run(cfg, target, console):
        made = [CaseResult(c, n, o, message="assert 1 == 2" if o == "failed" else "") for c, n, o in cases]
        run_dir = RunDirectory.create(cfg.reports_dir)
        failed = any(c.outcome == "failed" for c in made)
        return KernelsOutcome(run_dir, made, "complete", exit_code if exit_code is not None else int(failed))

    return run


PASSING_KERNELS = fake_kernels(("kernels.test_nvfp4_format", "test_roundtrip[cpu]", "passed"))


def run_nightly(config, targets, factories, **kw):
    by_name = dict(zip([t.name for t in targets], factories))
    kw.setdefault("run_kernels", PASSING_KERNELS)
    return nightly(config, targets, steps=["hello"], reports_dir=config.reports_dir / "nightly",
                   make_runner=lambda cfg, target, log: by_name[target.name](cfg, target, log),
                   prepare=None, log=lambda message: None, **kw)


def test_departs_twice_is_changed_departs_once_is_flaky(config):
    steady = runners(dict(gpu_smi=H100, run_output=MISMATCH_RUN, run_code=1))
    flaky = runners(dict(gpu_smi=H100, run_output=MISMATCH_RUN, run_code=1), dict(gpu_smi=H100))
    targets = [Target("h100-a", "docker", endpoint="ssh://gpu@a", arch="sm_90"),
               Target("h100-b", "docker", endpoint="tcp://b:2376", arch="sm_90")]
    outcome = run_nightly(config, targets, [steady, flaky])

    assert outcome.exit_code == 1
    a, b = outcome.targets
    assert [(e.result.step, e.classification) for e in a.entries] == [("hello", CHANGED)]
    assert [(e.result.step, e.classification) for e in b.entries] == [("hello", FLAKY)]
    assert len(steady.made) == len(flaky.made) == 2  # each departure was run exactly once more
    assert b.entries[0].first.outcome is Outcome.MISMATCH and b.entries[0].result.outcome is Outcome.PASS
    assert a.entries[0].result.reproduce == "DOCKER_HOST=ssh://gpu@a invoke repro hello --arch sm_90a --backend docker"
    # each target has its own run directories: the first run and the rerun
    assert len(a.runs) == 2 and all((outcome.path / r / "run.json").is_file() for r in a.runs)

    summary = (outcome.path / "summary.md").read_text()
    assert summary.index("## Changed") < summary.index("## Flaky") < summary.index("## Counts")
    assert "reproduce: `DOCKER_HOST=ssh://gpu@a invoke repro hello" in summary
    assert "**1 changed, 1 flaky**" in summary

    junit = ET.parse(outcome.path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in junit.iter("testsuite")}
    assert set(suites) == {"h100-a", "h100-b"}
    assert suites["h100-a"].find("testcase/failure") is not None
    flaky_case = suites["h100-b"].find("testcase")
    assert flaky_case.find("failure") is None and "flaky: the first run observed mismatch" in flaky_case.find(
        "system-out").text
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema not installed")
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(outcome.path / "junit.xml"))

    record = json.loads((outcome.path / "nightly.json").read_text())
    assert record["status"] == "complete" and record["exit_code"] == 1
    assert [t["entries"][0]["classification"] for t in record["targets"]] == [CHANGED, FLAKY]


def test_only_flaky_exits_zero(config):
    flaky = runners(dict(gpu_smi=H100, run_output=MISMATCH_RUN, run_code=1), dict(gpu_smi=H100))
    outcome = run_nightly(config, [Target("h100", "host", arch="sm_90")], [flaky])
    assert outcome.exit_code == 0 and outcome.targets[0].entries[0].classification == FLAKY


def test_a_dead_target_is_infra_the_other_completes(config):
    dead = runners(DockerUnavailableError("Error while fetching server API version: connection refused"))
    fine = runners(dict(gpu_smi=H100))
    outcome = run_nightly(config, [Target("down", "docker", endpoint="unix:///nonexistent.sock"),
                                   Target("up", "docker", arch="sm_90")], [dead, fine])
    down, up = outcome.targets
    assert outcome.exit_code == 3
    assert down.status == "infra_error" and "connection refused" in down.error and down.entries == []
    assert up.status == "complete" and [e.classification for e in up.entries] == [MATCH]
    summary = (outcome.path / "summary.md").read_text()
    assert "## Infrastructure errors" in summary and "**down**: " in summary
    suites = {s.get("name"): s for s in ET.parse(outcome.path / "junit.xml").getroot().iter("testsuite")}
    assert suites["down"].find("testcase/error") is not None and suites["up"].get("errors") == "0"


def test_a_target_on_the_wrong_gpu_is_flagged(config):
    outcome = run_nightly(config, [Target("spark", "docker", arch="sm_121")], [runners(dict(gpu_smi=H100))])
    assert outcome.exit_code == 3
    assert "expected a sm_121 device, found sm_90" in outcome.targets[0].error


@pytest.mark.parametrize("first, rerun, expected", [
    (Verdict.MATCH, None, MATCH), (Verdict.INFRA, None, INFRA), (Verdict.DEPARTED, Verdict.DEPARTED, CHANGED),
    (Verdict.DEPARTED, Verdict.MATCH, FLAKY), (Verdict.DEPARTED, Verdict.INFRA, INFRA), (Verdict.DEPARTED, None, INFRA),
])
def test_classify_pair(first, rerun, expected):
    def result(verdict):
        return StepResult("s", "sm_90a", Outcome.PASS, "r", verdict=verdict)

    assert classify_pair(result(first), result(rerun) if rerun else None) == expected


def write_targets(tmp_path, text):
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_targets_file_is_validated(tmp_path):
    path = write_targets(tmp_path, """
targets:
  - {name: spark, docker: "ssh://me@spark", arch: sm_121a, labels: [sm121]}
  - {name: local, backend: host, arch: sm_90, compile_arch: sm_90a}
""")
    spark, local = load_targets(path)
    assert (spark.endpoint, spark.arch, spark.labels, spark.backend) == ("ssh://me@spark", "sm_121", ("sm121",), "docker")
    assert (local.backend, local.compile_arch) == ("host", "sm_90a")
    assert select_targets([spark, local], ["local"]) == [local]
    with pytest.raises(UsageError, match="unknown target 'nope'"):
        select_targets([spark, local], ["nope"])


@pytest.mark.parametrize("text, key, problem", [
    ("targets: []", "targets", "non-empty list"),
    ("targets:\n  - {name: a, docker: 'http://x'}", "targets[0].docker", "unix://"),
    ("targets:\n  - {name: a}\n  - {name: a}", "targets[1].name", "duplicate"),
    ("targets:\n  - {name: a, gpu: 1}", "targets[0].gpu", "unknown key"),
    ("targets:\n  - {name: a, backend: host, docker: 'unix:///x'}", "targets[0].docker", "no Docker endpoint"),
    ("targets:\n  - {name: a, arch: 121}", "targets[0].arch", "arch like"),
    ("targets:\n  - {name: a, build: 1}", "targets[0].build", "true or false"),
    ("targets: [", None, "not valid YAML"),
])
def test_bad_targets_file_is_one_line_naming_the_key(tmp_path, text, key, problem):
    path = write_targets(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_targets(path)
    assert caught.value.key == key and problem in caught.value.one_line() and str(path) in caught.value.one_line()
    assert caught.value.exit_code == 2 and "\n" not in caught.value.one_line()


def test_merge_per_runner_directories(config, tmp_path):
    a = run_nightly(config, [Target("sm90-a", "host", arch="sm_90")], [runners(dict(gpu_smi=H100))])
    b = run_nightly(config, [Target("sm90-b", "host", arch="sm_90")],
                    [runners(dict(gpu_smi=H100, run_output=MISMATCH_RUN, run_code=1))])
    path, code = merge_reports([a.path, b.path], tmp_path / "merged")
    assert code == 1
    reports = load_reports(path)
    assert [(r.target.name, r.entries[0].classification) for r in reports] == [("sm90-a", MATCH), ("sm90-b", CHANGED)]
    with pytest.raises(UsageError, match="appears in more than one input"):
        merge_reports([a.path, a.path], tmp_path / "merged")
    with pytest.raises(UsageError, match="not a gpurepro run directory"):
        merge_reports([tmp_path], tmp_path / "merged")


def test_merge_takes_plain_run_directories_too(config, tmp_path):
    from gpurepro.suites.repro import RunRequest, execute
    from gpurepro.render.console import Console

    run = execute(config, RunRequest(steps=["hello"], argv=["invoke"]), console=Console(),
                  runner=FakeRunner(gpu_smi=H100)).run
    [report] = load_reports(run.path)
    assert report.device == "sm_90" and [e.classification for e in report.entries] == [MATCH]
    assert app.report_merge(str(run.path), out=str(tmp_path / "m"), config=str(config.path)) == 0


def test_compile_arch_applies_only_to_steps_that_list_it(config):
    from gpurepro.manifest import load_manifest
    from gpurepro.suites.repro import RunRequest, target_arch

    steps = load_manifest(config.manifest).steps
    request = RunRequest(all=True, prefer_arch="sm_120a", argv=[])
    assert target_arch(steps["broken"], request, config) == "sm_120a"
    assert target_arch(steps["hello"], request, config) == "sm_90a"  # an SM90-only step keeps its own target
    assert target_arch(steps["hello"], RunRequest(arch="sm_100a", argv=[]), config) == "sm_100a"  # --arch forces


def test_targets_file_in_the_repo_loads():
    from projects import ROOT

    targets = load_targets(ROOT / "ci" / "targets.yaml")
    assert {t.name for t in targets} >= {"sm120", "sm121", "sm90"}


def test_kernel_tests_run_on_each_target_and_join_its_suite(config):
    failing = fake_kernels(("kernels.test_router", "test_ids[cpu]", "failed"),
                           ("kernels.test_router", "test_weights[cpu]", "passed"))
    outcome = run_nightly(config, [Target("a", "host", arch="sm_90")], [runners(dict(gpu_smi=H100))],
                          run_kernels=failing)
    [report] = outcome.targets
    assert outcome.exit_code == 1  # a failing kernel test is news like a changed step
    assert report.kernels["failed"] == ["kernels.test_router::test_ids[cpu]"]
    assert (outcome.path / report.kernels["run"]).is_dir()
    suite = next(ET.parse(outcome.path / "junit.xml").getroot().iter("testsuite"))
    classnames = [c.get("classname") for c in suite.iter("testcase")]
    assert classnames == ["repros", "kernels.test_router", "kernels.test_router"]
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    summary = (outcome.path / "summary.md").read_text()
    assert "## Kernel tests" in summary and "`kernels.test_router::test_ids[cpu]`" in summary


def test_kernel_tests_that_cannot_run_are_infra(config):
    def broken(cfg, target, console):
        raise DockerUnavailableError("connection refused")

    outcome = run_nightly(config, [Target("a", "host", arch="sm_90")], [runners(dict(gpu_smi=H100))],
                          run_kernels=broken)
    assert outcome.exit_code == 3 and outcome.targets[0].status == "infra_error"
    suite = next(ET.parse(outcome.path / "junit.xml").getroot().iter("testsuite"))
    assert suite.get("errors") == "1" and "connection refused" in suite.find("testcase/error").get("message")


def test_kernels_can_be_left_out_per_target(tmp_path):
    path = write_targets(tmp_path, "targets:\n  - {name: a, kernels: false}\n  - {name: b}")
    a, b = load_targets(path)
    assert (a.kernels, b.kernels) == (False, True)
    with pytest.raises(ConfigError, match="true or false"):
        load_targets(write_targets(tmp_path, "targets:\n  - {name: a, kernels: maybe}"))


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from gpurepro.cli import main

    assert main(["ci.nightly", "--target", "no-such-target"]) == 2
    assert main(["report-merge", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [e for e in err if e.startswith("gpurepro: ")] and len(err) == 2
    assert "unknown target 'no-such-target'" in err[0] and "not a gpurepro run directory" in err[1]
