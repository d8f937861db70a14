"""Replay recomputes each step's compile key before it compiles or runs, and says whether the inputs are the
bundled run's."""
from __future__ import annotations

from fake_runner import STEPS, FakeRunner
from fake_runs import make_run
from gpurepro import bundle, replay
from gpurepro.config import load_config
from projects import make_project

IMAGE = "sha256:" + "5" * 64


def test_replay_says_whether_compile_inputs_match(tmp_path, capsys):
    config = load_config(make_project(tmp_path, steps=STEPS).config_path, env={})
    old = make_run(config, FakeRunner(image_id=IMAGE), steps=("hello",)).run.path
    made = bundle.create(old, tmp_path).path
    same = replay.replay(made, config, runner=FakeRunner(image_id=IMAGE))
    assert "hello[sm_90a]: compile inputs the same as the bundled run's" in capsys.readouterr().out
    assert not any(line.startswith("compile inputs") for line in same.differences)
    (config.repros_dir / "hello.cu").write_text("// changed since the bundle was made\n")
    other = replay.replay(made, config, runner=FakeRunner(image_id=IMAGE))
    assert "compile inputs differ from the bundled run's" in capsys.readouterr().out
    assert "compile inputs: 1 of 1 steps' cache keys differ from the bundled run's" in " ".join(other.differences)
