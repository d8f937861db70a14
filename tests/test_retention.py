"""reports.prune and the run lock: old runs go; the newest, reports/latest's and runs in use stay."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from fake_runs import FakeRunner, make_run, project_config
from gpurepro import app
from gpurepro.run import lock as runlock
from gpurepro.errors import UsageError
from gpurepro.retention import prune, runs
from projects import ROOT


def fake_run(reports, run_id, status="complete"):
    path = reports / run_id
    (path / "steps").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"run_id": run_id, "status": status}))
    return path


def ids(n):
    return [f"202611{day:02d}T120000Z-{day:06x}" for day in range(1, n + 1)]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this pid now (barring immediate reuse)


def write_lock(run, pid, **extra):
    data = {"pid": pid, "hostname": socket.gethostname(), "process_start": runlock._process_start(pid), **extra}
    (run / runlock.LOCK_NAME).write_text(json.dumps(data))


@pytest.fixture
def reports(tmp_path):
    path = tmp_path / "reports"
    path.mkdir()
    return path


def test_keeps_the_newest_n_and_never_touches_other_files(reports):
    made = [fake_run(reports, run_id) for run_id in ids(5)]
    (reports / "README.md").write_text("not a run")
    (reports / "notes").mkdir()
    os.symlink(made[-1].name, reports / "latest")
    done = prune(reports, 2)
    assert done.removed == [p.name for p in made[:3]]
    assert [p.name for p in runs(reports)] == [p.name for p in made[3:]]
    assert (reports / "README.md").exists() and (reports / "notes").is_dir()
    assert not [p for p in reports.iterdir() if p.name.startswith(".pruning")]


def test_never_removes_newest_latest_or_a_run_in_use(reports):
    made = [fake_run(reports, run_id, status="interrupted" if i in (1, 2) else "complete")
            for i, run_id in enumerate(ids(6))]
    os.symlink(made[0].name, reports / "latest")   # latest pointed back at an old run
    write_lock(made[1], os.getpid())                # interrupted, and its process (this one) is alive
    write_lock(made[2], dead_pid())                 # interrupted, killed long ago: an ordinary old run
    write_lock(made[3], os.getpid(), process_start="1")  # the pid was recycled by another process
    done = prune(reports, 0)
    assert done.protected == {made[0].name: "reports/latest points at it",
                              made[1].name: f"in use (pid {os.getpid()} on {socket.gethostname()})",
                              made[5].name: "newest run"}
    assert done.removed == [made[2].name, made[3].name, made[4].name]
    assert sorted(p.name for p in runs(reports)) == sorted(done.protected)


def test_a_lock_from_another_host_counts_as_live(reports):
    old, _new = fake_run(reports, ids(2)[0]), fake_run(reports, ids(2)[1])
    write_lock(old, 1, hostname="elsewhere")
    assert prune(reports, 0).protected[old.name].startswith("in use (pid 1 on elsewhere)")


def test_dry_run_removes_nothing(reports, capsys, tmp_path):
    for run_id in ids(3):
        fake_run(reports, run_id)
    done = prune(reports, 1, dry_run=True)
    assert len(done.removed) == 2 and len(runs(reports)) == 3


@pytest.mark.parametrize("keep", [-1, "x"])
def test_bad_keep_is_bad_input(keep, tmp_path):
    config = project_config(tmp_path)
    with pytest.raises(UsageError) as caught:
        app.reports_prune(keep, config=str(config.path))
    assert caught.value.exit_code == 2


def test_a_live_process_holding_a_run_keeps_it_until_it_exits(reports):
    held, _newest = fake_run(reports, ids(2)[0], status="interrupted"), fake_run(reports, ids(2)[1])
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from gpurepro.run import lock as runlock
        runlock.acquire({str(held)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert held.name in prune(reports, 0).protected and held.is_dir()
    finally:
        child.kill()
        child.wait()
    assert prune(reports, 0).removed == [held.name]  # killed outright: its lock is stale now


def test_the_pipeline_holds_the_lock_while_running_and_drops_it_after(tmp_path):
    config = project_config(tmp_path)
    seen = []

    class Watching(FakeRunner):
        def exec(self, argv, *, workdir, timeout_s, env=None):
            parts = workdir.split("/")  # /work/<run-id>/<step> for the step's commands
            if len(parts) > 3:
                seen.append(runlock.holder(config.reports_dir / parts[2]))
            return super().exec(argv, workdir=workdir, timeout_s=timeout_s, env=env)

    outcome = make_run(config, Watching(), steps=("hello",))
    assert seen and all(h and h["pid"] == os.getpid() for h in seen)
    assert not (outcome.run.path / runlock.LOCK_NAME).exists()
    assert runlock.holder(outcome.run.path) is None


def test_an_interrupted_run_releases_its_lock(tmp_path):
    config = project_config(tmp_path)

    def interrupt(argv):
        return argv[0] == "nvcc"

    interrupt.exc = KeyboardInterrupt()
    from gpurepro.errors import InterruptedRun

    with pytest.raises(InterruptedRun):
        make_run(config, FakeRunner(fail_on=interrupt), steps=("hello",))
    latest = (config.reports_dir / "latest").resolve()
    assert json.loads((latest / "run.json").read_text())["status"] == "interrupted"
    assert not (latest / runlock.LOCK_NAME).exists()


def test_prune_from_the_command_line(tmp_path):
    config = project_config(tmp_path)
    for run_id in ids(3):
        fake_run(config.reports_dir, run_id)
    env = {**os.environ, "GPUREPRO_CONFIG": str(config.path), "PYTHONPATH": str(ROOT)}
    env.pop("GPUREPRO_REPORTS", None)
    done = subprocess.run([sys.executable, "-m", "invoke", "reports.prune", "--keep", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed 2 run(s)" in done.stdout
    assert [p.name for p in runs(config.reports_dir)] == [ids(3)[-1]]
