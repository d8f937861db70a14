"""A rerun where every compile is a cache hit, against the real engine: the hits go into the container in one copy
and come back out of the one exec that runs them, and end exactly as the run that compiled them (no mock of the
daemon: the runner is the real DockerRunner, counted from outside)."""
import pytest

from gpurepro.config import load_config
from gpurepro.render.console import Console
from gpurepro.runners.base import Command
from gpurepro.runners.docker import DockerRunner, connect
from gpurepro.suites.repro import RunRequest, execute

pytestmark = pytest.mark.docker

STEPS = [
    {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
    {"id": "plain", "file": "plain.cu", "parent": None, "change": "no markers", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
    {"id": "broken", "file": "broken.cu", "parent": "hello", "change": "SF vector size 16", "targets": ["sm_90a"],
     "compile": {"sm_90a": "compile_error"}, "expect": {"sm_90": "unknown"}},
]


class CountingRunner(DockerRunner):
    """The real runner; counts what a run asks of the container."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = {"put": 0, "get": 0, "exec": 0, "exec_many": 0}

    def put_files(self, dest, files, **kw):
        self.counts["put"] += 1
        return super().put_files(dest, files, **kw)

    def get_files(self, path):
        self.counts["get"] += 1
        return super().get_files(path)

    def exec(self, argv, **kw):
        self.counts["exec"] += 1
        return super().exec(argv, **kw)

    def exec_many(self, commands, **kw):
        self.counts["exec_many"] += 1
        return super().exec_many(commands, **kw)


def run_once(project, **request):
    config = load_config(project.config_path, env={"GPUREPRO_CONTAINER": project.container})
    runner = CountingRunner(connect(), config)
    outcome = execute(config, RunRequest(steps=["hello", "plain", "broken"], argv=["test"], **request),
                      console=Console(), runner=runner)
    return outcome, runner.counts


def left_in_container(docker_client, project) -> str:
    container = docker_client.containers.get(project.container)
    return container.exec_run(["ls", "-A", "/workspace/gpurepro"]).output.decode()


@pytest.mark.parametrize("compile_only", [False, True])
def test_warm_rerun_is_one_copy_in_and_one_exec(project_factory, toolchain_image, docker_client, compile_only):
    project = project_factory(steps=STEPS)
    first, _ = run_once(project, compile_only=compile_only)
    assert [r.cache["status"] for r in first.results] == ["miss", "miss", "miss"]
    again, counts = run_once(project, compile_only=compile_only)
    assert [r.cache["status"] for r in again.results] == ["hit", "hit", "hit"]
    # the probe is remembered for this container's start; the batch copies its files back out and removes
    # them, and the run's directory with them: no get_archive, no `rm` exec
    assert counts == {"put": 1, "get": 0, "exec": 0, "exec_many": 1}, counts
    assert again.run.run_id not in left_in_container(docker_client, project)
    assert first.run.run_id not in left_in_container(docker_client, project)
    assert [(r.step, r.outcome, r.reason) for r in again.results] == \
           [(r.step, r.outcome, r.reason) for r in first.results]
    for step in ("hello", "plain"):
        before = (first.run.path / "steps" / step)
        after = (again.run.path / "steps" / step)
        # the same binary, sources and preflight output as the run that compiled them
        assert (after / step).read_bytes() == (before / step).read_bytes()
        assert (after / "run.log").read_text() == (before / "run.log").read_text()
        assert (after / f"{step}.cu").is_file()
    assert "Incorrect SfVectorSize" in (again.run.path / "steps" / "broken" / "compile.log").read_text()


def test_exec_many_keeps_each_commands_exit_output_and_time_limit(project_factory, toolchain_image):
    project = project_factory(steps=STEPS)
    config = load_config(project.config_path, env={"GPUREPRO_CONTAINER": project.container})
    runner = DockerRunner(connect(), config)
    runner.start()
    try:
        big = 3 * runner.log_cap_bytes()
        results = runner.exec_many([
            Command(("sh", "-c", "echo one; echo err >&2; exit 3"), "/", 30),
            Command(("sleep", "30"), "/", 2),
            Command(("sh", "-c", f"head -c {big} /dev/zero | tr '\\0' x; echo; echo last line"), "/tmp", 30),
            Command(("sh", "-c", "kill -SEGV $$"), "/", 30),
            Command(("pwd",), "/tmp", 30),
        ]).results
    finally:
        runner.close()
    first, slow, loud, crashed, where = results
    assert (first.exit_code, first.output) == (3, "one\nerr\n")
    assert slow.timed_out and slow.exit_code == 124 and 1.5 < slow.seconds < 10
    assert loud.output_truncated and loud.output_bytes == big + len("\nlast line\n")
    assert loud.output.endswith("last line\n") and len(loud.output) < runner.log_cap_bytes() + 200
    assert crashed.signal == "SIGSEGV"
    assert where.output == "/tmp\n" and where.exit_code == 0


def test_exec_many_collects_a_directory_and_removes_it(project_factory, toolchain_image, docker_client):
    project = project_factory(steps=STEPS)
    config = load_config(project.config_path, env={"GPUREPRO_CONTAINER": project.container})
    runner = DockerRunner(connect(), config)
    runner.start()
    run_dir = f"{runner.work_root()}/batch-test"
    try:
        runner.put_files(f"{run_dir}/hits", {"a/in.txt": b"in", "a/prog": b"#!/bin/sh\necho made > out.txt\n",
                                            "b/in.txt": b"b"}, executable=frozenset({"a/prog"}))
        batch = runner.exec_many([Command(("./prog",), f"{run_dir}/hits/a", 30)], collect=f"{run_dir}/hits",
                                 drop=frozenset({"a/prog"}))
        assert batch.files == {"a/in.txt": b"in", "a/out.txt": b"made\n", "b/in.txt": b"b"}
        assert batch.results[0].exit_code == 0
        left = docker_client.containers.get(project.container).exec_run(["ls", "-A", runner.work_root()]).output
        assert b"batch-test" not in left  # the directory and its emptied parent are gone
        assert not runner.touched
    finally:
        runner.close()
