"""A rerun where every compile is a cache hit, against the real engine: the hits go through the container in one
copy in, one exec and one copy out, and end exactly as the run that compiled them (no mock of the daemon: the
runner is the real DockerRunner, counted from outside)."""
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

    def exec_many(self, commands):
        self.counts["exec_many"] += 1
        return super().exec_many(commands)


def run_once(project, **request):
    config = load_config(project.config_path, env={"GPUREPRO_CONTAINER": project.container})
    runner = CountingRunner(connect(), config)
    outcome = execute(config, RunRequest(steps=["hello", "plain", "broken"], argv=["test"], **request),
                      console=Console(), runner=runner)
    return outcome, runner.counts


@pytest.mark.parametrize("compile_only", [False, True])
def test_warm_rerun_is_one_copy_in_one_exec_one_copy_out(project_factory, toolchain_image, compile_only):
    project = project_factory(steps=STEPS)
    first, _ = run_once(project, compile_only=compile_only)
    assert [r.cache["status"] for r in first.results] == ["miss", "miss", "miss"]
    again, counts = run_once(project, compile_only=compile_only)
    assert [r.cache["status"] for r in again.results] == ["hit", "hit", "hit"]
    # the probe is remembered for this container's start; the work directory's removal is the one exec left
    assert counts == {"put": 1, "get": 1, "exec": 1, "exec_many": 1}, counts
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
        ])
    finally:
        runner.close()
    first, slow, loud, crashed, where = results
    assert (first.exit_code, first.output) == (3, "one\nerr\n")
    assert slow.timed_out and slow.exit_code == 124 and 1.5 < slow.seconds < 10
    assert loud.output_truncated and loud.output_bytes == big + len("\nlast line\n")
    assert loud.output.endswith("last line\n") and len(loud.output) < runner.log_cap_bytes() + 200
    assert crashed.signal == "SIGSEGV"
    assert where.output == "/tmp\n" and where.exit_code == 0
