"""A toolchain matrix run (--toolchain a,b) with fake runners: one run directory, a result per (step, toolchain),
the matrix in the summary, JUnit per cell, each toolchain's versions recorded, patches that do not apply."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from fake_runner import STEPS, FakeRunner
from gpurepro.config import load_config
from gpurepro.render.console import Console
from gpurepro.run import RunRecord
from gpurepro.suites import repro
from gpurepro.toolchains import load_toolchains
from projects import ROOT, make_project


@pytest.fixture
def config(tmp_path):
    steps = [dict(s) for s in STEPS] + [{"id": "patched", "file": "hello.cu", "parent": "hello", "change": "a patch",
                                          "targets": ["sm_90a"], "compile": {"sm_90a": "ok"},
                                          "expect": {"sm_90": "pass"},
                                          "patches": ["cutlass-sm120-ptr-array-mxf8f6f4-tags.patch"]}]
    project = make_project(tmp_path, steps=steps)
    patches = project.path / "repros" / "patches"
    patches.mkdir()
    for item in (ROOT / "repros" / "patches").iterdir():
        (patches / item.name).write_bytes(item.read_bytes())
    (project.path / "ci").mkdir()
    (project.path / "ci" / "toolchains.yaml").write_text((ROOT / "ci" / "toolchains.yaml").read_text())
    return load_config(project.config_path, env={})


def matrix_run(config, monkeypatch, names, steps=("hello", "broken", "patched")):
    toolchains = load_toolchains(config.root / "ci" / "toolchains.yaml")
    made = []

    def lanes(cfg, request, *, log):  # every toolchain its own lane: no images to build, no wheels to hash
        return [repro.Lane(toolchains[n]) for n in request.toolchains]

    def runner_for(lane, cfg, request, log):
        runner = FakeRunner(image_id="sha256:" + str(abs(hash(lane.name)))[:12].ljust(64, "0"))
        made.append((lane.name, runner))
        return runner

    monkeypatch.setattr(repro, "plan_lanes", lanes)
    monkeypatch.setattr(repro.Lane, "make_runner", runner_for)
    request = repro.RunRequest(steps=list(steps), toolchains=names, argv=["invoke", "repro"], compile_only=True)
    return repro.execute(config, request, console=Console()), made


def test_one_run_directory_with_every_step_and_toolchain(config, monkeypatch):
    outcome, made = matrix_run(config, monkeypatch, ["default", "cutlass-4.2"])
    assert [name for name, _ in made] == ["default", "cutlass-4.2"]  # one runner per toolchain
    cells = {(r.step, r.toolchain): r for r in outcome.results}
    assert set(cells) == {(s, t) for s in ("hello", "broken", "patched") for t in ("default", "cutlass-4.2")}
    # the CUTLASS patch is declared for 4.5.*: on 4.2.1 that cell is an infrastructure error, not a crash
    bad = cells[("patched", "cutlass-4.2")]
    assert bad.outcome.value == "infra_error" and "does not apply to CUTLASS 4.2.1" in bad.reason
    assert cells[("patched", "default")].outcome.value == "compiled"
    record = RunRecord.read(outcome.run.path)
    assert [t["name"] for t in record.toolchains] == ["default", "cutlass-4.2"]
    assert {t["cutlass"] for t in record.toolchains} == {"4.5.0", "4.2.1"}
    assert (outcome.run.path / "steps" / "hello@cutlass-4.2" / "result.json").is_file()
    summary = (outcome.run.path / "summary.md").read_text()
    assert "## Steps × toolchains" in summary and "| step | arch | default | cutlass-4.2 |" in summary
    names = {c.get("name") for c in ET.parse(outcome.run.path / "junit.xml").getroot().iter("testcase")}
    assert "hello[sm_90a,cutlass-4.2]" in names and "patched[sm_90a,default]" in names
    assert cells[("hello", "cutlass-4.2")].reproduce.endswith("--toolchain cutlass-4.2")


def test_unknown_toolchain_is_bad_input(config):
    from gpurepro import app
    from gpurepro.errors import BadInputError

    with pytest.raises(BadInputError, match="no-such"):
        app.repro("hello", toolchain="default,no-such", config=str(config.path), backend="host")


def test_nightly_reports_what_the_next_toolchain_would_change(config, monkeypatch):
    from gpurepro.nightly import Target, nightly

    toolchains = load_toolchains(config.root / "ci" / "toolchains.yaml")
    monkeypatch.setattr(repro, "plan_lanes", lambda cfg, request, *, log: [repro.Lane(toolchains[n])
                                                                            for n in request.toolchains])
    # with the next toolchain, hello no longer compiles
    monkeypatch.setattr(repro.Lane, "make_runner", lambda lane, cfg, request, log: FakeRunner(
        compile_code=1, compile_output="x.cu(1): error: identifier undefined"))
    done = nightly(config, [Target("a", "host", kernels=False)], steps=["hello"],
                   reports_dir=config.reports_dir / "nightly", make_runner=lambda cfg, target, log: FakeRunner(),
                   prepare=None, log=lambda m: None, next_toolchain="nvcc-13.5")
    [report] = done.targets
    assert report.upgrade["toolchain"] == "nvcc-13.5"
    assert [(c["step"], c["now"], c["next"]) for c in report.upgrade["changes"]] == [("hello", "skipped",
                                                                                      "compile_error")]
    assert done.exit_code == 0  # what an upgrade would change is news, not today's verdict
    summary = (done.path / "summary.md").read_text()
    assert "## On upgrade to nvcc-13.5" in summary and "`hello` on **a**" in summary


def test_the_page_has_a_column_per_toolchain(config, monkeypatch):
    outcome, _ = matrix_run(config, monkeypatch, ["default", "cutlass-4.2"], steps=("hello",))
    page = (outcome.run.path / "index.html").read_text()
    assert "<th>sm_90a · default</th>" in page and "<th>sm_90a · cutlass-4.2</th>" in page
    assert 'id="step-hello-sm_90a-cutlass-4.2"' in page


def test_bisect_toolchains_finds_the_first_flip_with_both_first_errors(config, monkeypatch, capsys):
    from gpurepro import app

    toolchains = load_toolchains(config.root / "ci" / "toolchains.yaml")
    monkeypatch.setattr(repro, "plan_lanes", lambda cfg, request, *, log: [repro.Lane(toolchains[n])
                                                                            for n in request.toolchains])

    def runner_for(lane, cfg, request, log):  # hello stops compiling from nvcc-13.5 on
        if lane.name == "nvcc-13.5":
            return FakeRunner(compile_code=1, compile_output='x.cu(7): error: "cute::foo" is undefined\n')
        return FakeRunner()

    monkeypatch.setattr(repro.Lane, "make_runner", runner_for)
    code = app.bisect(from_step="hello", toolchains="default,cutlass-4.2,nvcc-13.5", compile_only=True,
                      config=str(config.path), argv=["invoke", "bisect"])
    out = capsys.readouterr().out
    assert code == 1
    assert "first flip: nvcc-13.5 (compile_error, was compiled on default)" in out
    assert 'error: "cute::foo" is undefined' in out  # the flip's first error beside the base's outcome
