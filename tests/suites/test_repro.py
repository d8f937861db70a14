"""The pipeline against an in-memory runner: stage order, outcomes, verdicts, exit codes, the run directory."""
import json
import xml.etree.ElementTree as ET

import pytest

from projects import ROOT, make_project
from gpurepro.classify import ExecResult
from gpurepro.config import load_config
from gpurepro.render.console import Console
from gpurepro.errors import ContainerError, InterruptedRun
from gpurepro.outcomes import Outcome, Verdict
from gpurepro.suites.repro import RunRequest, execute, outcome_from_exception

from fake_runner import HELLO_RUN, PREFLIGHT, STEPS, FakeRunner  # noqa: F401


@pytest.fixture
def config(tmp_path):
    project = make_project(tmp_path, steps=STEPS)
    return load_config(project.config_path, env={})


def run(config, runner, steps=("hello",), **kw):
    return execute(config, RunRequest(steps=list(steps), argv=["invoke", "repro", *steps], **kw),
                   console=Console(), runner=runner)


def test_no_gpu_skips_but_keeps_host_side_records(config):
    runner = FakeRunner()
    outcome = run(config, runner)
    [result] = outcome.results
    assert (result.outcome, result.reason, result.verdict) == (Outcome.SKIPPED, "no GPU", Verdict.NOT_RUN)
    assert ["./hello", "--preflight-only"] in runner.calls and ["./hello"] not in runner.calls
    assert outcome.exit_code == 0
    step_dir = outcome.run.path / "steps" / "hello"
    assert {"hello.cu", "compile.log", "run.log", "result.json", "layout.json", "hello"} <= {
        p.name for p in step_dir.iterdir()}
    assert json.loads((step_dir / "layout.json").read_text())[0]["name"] == "sf"
    record = json.loads((outcome.run.path / "run.json").read_text())
    assert record["status"] == "complete" and record["exit_code"] == 0
    assert record["environment"]["cutlass_version"] == "4.5.0"
    assert (outcome.run.path.parent / "latest").resolve() == outcome.run.path
    # no work directory left behind
    assert runner.removed == [f"/work/{outcome.run.run_id}"]  # the run's directory, once, with every step's


def test_wrong_arch_is_skipped_without_running(config):
    runner = FakeRunner(gpu_smi="NVIDIA H100 80GB HBM3, 9.0, 580.1", cuobjdump="ELF file 1: hello.1.sm_120a.cubin")
    [result] = run(config, runner).results
    assert result.outcome is Outcome.SKIPPED
    assert result.reason == "no image for sm_90 (binary has SASS sm_120a)"
    assert ["./hello"] not in runner.calls


def test_runs_on_matching_gpu_and_matches_expectation(config):
    runner = FakeRunner(gpu_smi="NVIDIA H100 80GB HBM3, 9.0, 580.1")
    outcome = run(config, runner)
    [result] = outcome.results
    assert (result.outcome, result.verdict, result.expected_key) == (Outcome.PASS, Verdict.MATCH, "expect.sm_90")
    assert outcome.exit_code == 0


def test_departure_exits_1_and_says_how_to_reproduce(config):
    runner = FakeRunner(gpu_smi="NVIDIA H100 80GB HBM3, 9.0, 580.1", run_code=2, run_output=(
        '@@repro {"event":"status","stage":"initialize","status":"Error Internal","cuda_error":"cudaErrorInvalidValue"}'))
    outcome = run(config, runner)
    [result] = outcome.results
    assert (result.outcome, result.verdict) == (Outcome.INIT_ERROR, Verdict.DEPARTED)
    assert outcome.exit_code == 1
    assert result.reproduce == "invoke repro hello --arch sm_90a --backend fake"
    summary = (outcome.run.path / "summary.md").read_text()
    assert "invoke repro hello --arch sm_90a --backend fake" in summary
    failure = ET.parse(outcome.run.path / "junit.xml").getroot().find("testcase/failure")
    assert failure.get("message").startswith("expected pass, observed init_error: initialize(): Error Internal")


def test_expected_compile_error_matches(config):
    runner = FakeRunner(compile_code=2, compile_output='x.cu(3): error: static assertion failed with "bad SF"\n')
    [result] = run(config, runner, steps=("broken",)).results
    assert (result.outcome, result.reason) == (Outcome.COMPILE_ERROR, "static_assert: bad SF")
    assert (result.verdict, result.expected_key) == (Verdict.MATCH, "compile.sm_120a")
    assert not any(call[0] == "./broken" for call in runner.calls)


def test_compiling_when_an_error_is_expected_departs(config):
    [result] = run(config, FakeRunner(), steps=("broken",)).results
    assert result.verdict is Verdict.DEPARTED and "expects compile_error" in result.reason


def test_infra_failure_becomes_infra_error_and_exit_3(config):
    def fail(argv):
        return argv[0] == "nvcc"

    fail.exc = ContainerError("vllm-dev", "nvcc", "exec API returned 500")
    outcome = run(config, FakeRunner(fail_on=fail), steps=("hello", "broken"))
    assert [r.outcome for r in outcome.results] == [Outcome.INFRA_ERROR, Outcome.INFRA_ERROR]
    assert outcome.results[0].reason == "container vllm-dev: exec API returned 500"
    assert outcome.exit_code == 3
    assert ET.parse(outcome.run.path / "junit.xml").getroot().get("errors") == "2"


def test_interrupt_marks_the_run(config):
    def interrupt(argv):
        return argv[0] == "nvcc"

    interrupt.exc = KeyboardInterrupt()
    with pytest.raises(InterruptedRun):
        run(config, FakeRunner(fail_on=interrupt))
    latest = (config.reports_dir / "latest").resolve()
    record = json.loads((latest / "run.json").read_text())
    assert record["status"] == "interrupted" and record["finished_at"]
    assert (latest / "junit.xml").is_file()
    assert not list(latest.rglob(".*.tmp"))  # no half-written temp files


def test_a_step_marked_interrupted_keeps_that_outcome_when_its_killed_compile_returns():
    # Ctrl-C with compiles running: the run's end marks the steps still compiling `interrupted` while their
    # compiles, killed by the cancel, return in the step threads as failed compiles; whichever comes second
    # must not replace the first (a CI run once recorded such a step as compile_error)
    import threading
    from types import SimpleNamespace

    from gpurepro.classify import Classification
    from gpurepro.outcomes import StepResult
    from gpurepro.suites.repro import StepContext, _decide

    def context():
        ctx = StepContext(step=None, arch="sm_90a", workdir="/w",
                          result=StepResult(step="s", arch="sm_90a", outcome=Outcome.INFRA_ERROR, reason="not run"))
        ctx.stage = "compiling"
        return ctx

    env = SimpleNamespace(interrupted=threading.Event())
    env.interrupted.set()
    killed = Classification(Outcome.COMPILE_ERROR, "nvcc: Killed")
    marked = context()
    with marked.lock:  # as _finish_run marks it
        marked.result.outcome, marked.result.reason = Outcome.INTERRUPTED, "interrupted during compiling"
        marked.done = marked.finished = True
    _decide(env, marked, killed)
    assert (marked.result.outcome, marked.result.reason) == (Outcome.INTERRUPTED, "interrupted during compiling")
    # the other order: the killed compile returns first, after the interrupt: it is decided `interrupted`
    first = context()
    _decide(env, first, killed)
    assert (first.result.outcome, first.result.reason, first.done) == (Outcome.INTERRUPTED,
                                                                        "interrupted during compiling", True)
    # and without an interrupt the first decision stands too
    calm = context()
    _decide(SimpleNamespace(interrupted=threading.Event()), calm, killed)
    _decide(SimpleNamespace(interrupted=threading.Event()), calm, Classification(Outcome.PASS, "late"))
    assert calm.result.outcome is Outcome.COMPILE_ERROR


def test_unexpected_exception_is_evidence_not_a_traceback():
    classified = outcome_from_exception(ValueError("bad things"))
    assert (classified.outcome, classified.reason) == (Outcome.INFRA_ERROR, "ValueError: bad things")


def test_parallel_compiles_keep_order(config):
    outcome = run(config, FakeRunner(), steps=("broken", "hello"), jobs=2)
    assert [r.step for r in outcome.results] == ["broken", "hello"]


@pytest.mark.parametrize("argv, expected", [
    (["/x/site-packages/gpurepro/__main__.py", "repro", "step01"], ["python", "-m", "gpurepro", "repro", "step01"]),
    (["/usr/lib/python3/site-packages/invoke/__main__.py", "repro", "step01"], ["invoke", "repro", "step01"]),
    (["/usr/local/bin/invoke", "bisect"], ["invoke", "bisect"]),
    (["./other.py", "x"], ["./other.py", "x"]),
])
def test_recorded_command_is_one_a_user_can_retype(argv, expected):
    from gpurepro.environment import invoked_command

    assert invoked_command(argv) == expected


def test_step_names_short_forms_and_suggestions(config):
    from gpurepro.errors import UnknownStepError
    from gpurepro.manifest import load_manifest

    manifest = load_manifest(config.manifest)
    assert manifest.get("hello").id == "hello"
    with pytest.raises(UnknownStepError) as caught:
        manifest.get("helo")
    assert caught.value.suggestions == ["hello"] and "did you mean hello?" in caught.value.one_line()
    real = load_manifest(ROOT / "repros" / "manifest.yaml")
    assert real.get("step1").id == "step01" and real.get("step6").id == "step06"
    with pytest.raises(UnknownStepError) as caught:
        real.get("stepp14")
    assert caught.value.suggestions[0] == "step14"


def test_arch_must_be_a_target_of_the_step_unless_forced(config):
    from gpurepro.errors import UsageError

    with pytest.raises(UsageError, match=r"--arch sm_120a is not a compile target of hello \(sm_90a\)") as caught:
        run(config, FakeRunner(), steps=("hello",), arch="sm_120a")
    assert "--force-arch" in caught.value.one_line()
    assert not config.reports_dir.exists()  # refused before any work
    outcome = run(config, FakeRunner(), steps=("hello",), arch="sm_120a", force_arch=True)
    assert outcome.results[0].arch == "sm_120a" and outcome.results[0].reproduce.endswith("--force-arch")
    everything = execute(config, RunRequest(all=True, arch="sm_120a", argv=["invoke", "repro", "all"]),
                         console=Console(), runner=FakeRunner())
    assert [r.step for r in everything.results] == ["broken"]  # `all` leaves out what has no such target
