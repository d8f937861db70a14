"""The warm engine (gpurepro/warm.py): commands handed to a resident, pre-imported process end exactly as they
would in-process (output, exit code, error line), a changed engine gets a new server, and nothing of it
outlives the test. No Docker: `repro.list` and bad input need none (tests/integration/test_warm_docker.py
runs a real repro through it)."""
from __future__ import annotations

import os
import signal
import pathlib
import subprocess
import sys
import time

import pytest

from gpurepro import warm
from projects import ROOT, make_project

STEPS = [{"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
          "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}}]


@pytest.fixture
def runtime(tmp_path):
    directory = tmp_path / "xdg"
    directory.mkdir(mode=0o700)
    yield directory
    subprocess.run([sys.executable, "-m", "gpurepro.warm", "stop"], env={**os.environ, "XDG_RUNTIME_DIR": str(directory)},
                   cwd=ROOT, check=False)
    deadline = time.monotonic() + 10
    while list((directory / "gpurepro").glob("*.sock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((directory / "gpurepro").glob("*.sock")), "a warm engine outlived its test"


def invoke(project, runtime, *args, warm_on=True):
    env = project.env()
    env.update(XDG_RUNTIME_DIR=str(runtime), GPUREPRO_WARM="1" if warm_on else "0", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def served(runtime) -> list[str]:
    logs = list((runtime / "gpurepro").glob("*.log"))
    return [line for log in logs for line in log.read_text().splitlines()]


def wait_for_server(runtime, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((runtime / "gpurepro").glob("*.sock")) and list((runtime / "gpurepro").glob("*.pid")):
            return
        time.sleep(0.1)
    pytest.fail("no warm engine started")


def test_a_command_runs_in_the_warm_engine_as_it_would_in_process(tmp_path, runtime):
    project = make_project(tmp_path, steps=STEPS)
    alone = invoke(project, runtime, "repro.list", warm_on=False)
    first = invoke(project, runtime, "repro.list")  # no server yet: runs here and starts one
    assert first.returncode == 0 and first.stdout == alone.stdout
    wait_for_server(runtime)
    assert served(runtime) == []
    again = invoke(project, runtime, "repro.list")
    assert (again.returncode, again.stdout, again.stderr) == (0, alone.stdout, alone.stderr)
    lines = served(runtime)
    assert len(lines) == 1 and "task=list_steps exit=0" in lines[0] and f"cwd={ROOT}" in lines[0]


def test_bad_input_is_the_same_one_line_and_exit_code(tmp_path, runtime):
    project = make_project(tmp_path, steps=STEPS)
    alone = invoke(project, runtime, "repro", "nosuch", warm_on=False)
    invoke(project, runtime, "repro.list")
    wait_for_server(runtime)
    through = invoke(project, runtime, "repro", "nosuch")
    assert alone.returncode == 2 and "unknown step 'nosuch'" in alone.stderr
    assert (through.returncode, through.stderr, through.stdout) == (2, alone.stderr, alone.stdout)
    assert any("task=run exit=2" in line for line in served(runtime))


def test_the_clients_environment_is_the_one_the_command_sees(tmp_path, runtime):
    # the server was started from another project's environment; the command must read this one's config
    first = make_project(tmp_path / "one", steps=STEPS)
    other_steps = [dict(STEPS[0], id="other")]
    second = make_project(tmp_path / "two", steps=other_steps)
    invoke(first, runtime, "repro.list")
    wait_for_server(runtime)
    listed = invoke(second, runtime, "repro.list")
    assert listed.returncode == 0 and "other" in listed.stdout and "hello" not in listed.stdout
    assert len(served(runtime)) == 1


def test_off_by_default_outside_a_terminal_and_in_ci():
    assert warm.enabled({"GPUREPRO_WARM": "1"}) and not warm.enabled({"GPUREPRO_WARM": "0"})
    if not os.isatty(0):
        assert not warm.enabled({})
    assert not warm.enabled({"CI": "true"})


def test_identity_follows_the_engines_sources(tmp_path, monkeypatch):
    package = tmp_path / "gpurepro"
    package.mkdir()
    (package / "app.py").write_text("x = 1\n")
    monkeypatch.setattr(warm, "PACKAGE", package)
    before = warm.identity()
    assert warm.identity() == before
    os.utime(package / "app.py", ns=(1, 1))
    assert warm.identity() != before
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert warm.identity() != before


def test_a_runtime_directory_others_can_enter_is_not_used(tmp_path, monkeypatch):
    base = tmp_path / "xdg"
    (base / "gpurepro").mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    (base / "gpurepro").chmod(0o755)
    assert warm.runtime_dir() is None and warm.socket_path("x") is None
    (base / "gpurepro").chmod(0o700)
    assert warm.runtime_dir() == base / "gpurepro"


def test_a_dead_socket_runs_the_task_here_and_starts_a_server(tmp_path, runtime):
    project = make_project(tmp_path, steps=STEPS)
    directory = runtime / "gpurepro"
    directory.mkdir(mode=0o700, exist_ok=True)
    env = {**project.env(), "XDG_RUNTIME_DIR": str(runtime)}
    ident = subprocess.run([sys.executable, "-c", "from gpurepro import warm; print(warm.identity())"], cwd=ROOT,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(directory / f"{ident}.sock").write_text("")  # a file where a socket should answer
    done = invoke(project, runtime, "repro.list")
    assert done.returncode == 0 and "hello" in done.stdout
    wait_for_server(runtime)


def test_stop_leaves_a_process_that_is_not_an_engine_alone(tmp_path):
    directory = tmp_path / "gpurepro"
    directory.mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sleep", "30"])  # its pid in a stale pidfile, as after a killed engine
    try:
        (directory / "stale.pid").write_text(f"{sleeper.pid}\n")
        assert warm.stop(directory) == 0
        assert sleeper.poll() is None and not (directory / "stale.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_signal_the_client_ignores_is_not_forwarded(tmp_path, runtime):
    # started in the background (SIGINT ignored), a command in-process ignores Ctrl-C: through the engine too
    project = make_project(tmp_path, steps=STEPS)
    invoke(project, runtime, "repro.list")
    wait_for_server(runtime)
    script = ("import signal, sys; from gpurepro import warm; "
              "signal.signal(signal.SIGINT, signal.SIG_IGN); "
              "installed = []; real = signal.signal; "
              "signal.signal = lambda s, h: installed.append(s) or real(s, h); "
              "print(warm.run_remote('list_steps', [], {})[0]); print(sorted(int(s) for s in set(installed)))")
    env = {**project.env(), "XDG_RUNTIME_DIR": str(runtime), "GPUREPRO_WARM": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "0", done.stdout + done.stderr
    assert int(signal.SIGINT) not in eval(lines[-1]) and int(signal.SIGTERM) in eval(lines[-1])
