"""The end of a run on CI: the summary on the job page, annotations at the departed steps' sources."""
from __future__ import annotations

import io

from fake_runner import STEPS, FakeRunner
from fake_runs import H100, make_run
from gpurepro import app
from gpurepro.config import load_config
from gpurepro.nightly import nightly, Target
from gpurepro.render.console import Console
from projects import make_project

MISMATCH_RUN = '@@repro {"event":"result","outcome":"mismatch","detail":"3 of 10 differ"}\n'


def test_github_summary_and_annotations(tmp_path, monkeypatch):
    project = make_project(tmp_path, steps=STEPS)
    config = load_config(project.config_path, env={})
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    outcome = make_run(config, FakeRunner(gpu_smi=H100, run_output=MISMATCH_RUN, run_code=1), steps=("hello",))
    out = io.StringIO()
    app.publish_to_ci(config, outcome.run.path / "summary.md", app._annotation_rows(config, outcome.results),
                      Console(out=out, err=io.StringIO()))
    text = summary.read_text()
    assert text.startswith("earlier step\n") and f"# gpurepro run {outcome.run.run_id}" in text
    [line] = [line for line in out.getvalue().splitlines() if line.startswith("::")]
    assert line.startswith("::error file=") and "hello.cu" in line and "expected pass, observed mismatch" in line


def test_no_ci_no_output(tmp_path, monkeypatch):
    project = make_project(tmp_path, steps=STEPS)
    config = load_config(project.config_path, env={})
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    outcome = make_run(config, FakeRunner(), steps=("hello",))
    out = io.StringIO()
    app.publish_to_ci(config, outcome.run.path / "summary.md", app._annotation_rows(config, outcome.results),
                      Console(out=out, err=io.StringIO()))
    assert out.getvalue() == ""


def test_nightly_and_replay_write_their_pages(tmp_path):
    project = make_project(tmp_path, steps=STEPS)
    config = load_config(project.config_path, env={})
    done = nightly(config, [Target("a", "host")], steps=["hello"], reports_dir=config.reports_dir / "nightly",
                   make_runner=lambda cfg, target, log: FakeRunner(), prepare=None, log=lambda m: None,
                   run_kernels=None)
    assert (done.path / "index.html").is_file() and "hello" in (done.path / "index.html").read_text()

    from gpurepro import bundle, replay

    old = make_run(config, FakeRunner(), steps=("hello",)).run.path
    made = bundle.create(old, tmp_path).path
    again = replay.replay(made, config, runner=FakeRunner())
    page = again.runs[0] / "compare.html"
    assert page.is_file() and old.name in page.read_text()


def test_cache_commands(tmp_path):
    project = make_project(tmp_path, steps=STEPS)
    config = load_config(project.config_path, env={})
    make_run(config, FakeRunner(image_id="sha256:" + "3" * 64), steps=("hello", "broken"))
    out = io.StringIO()
    assert app.cache_stats(config=str(config.path), console=Console(out=out, err=io.StringIO())) == 0
    assert "entries" in out.getvalue() and str(config.cache.dir) in out.getvalue()
    import pytest

    from gpurepro.errors import UsageError

    with pytest.raises(UsageError, match="say what to remove"):
        app.cache_prune(config=str(config.path), console=Console(out=io.StringIO(), err=io.StringIO()))
    out = io.StringIO()
    assert app.cache_prune(all=True, config=str(config.path), console=Console(out=out, err=io.StringIO())) == 0
    assert "removed 2 entries" in out.getvalue() and "0 left" in out.getvalue()  # both steps compiled
