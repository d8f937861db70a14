"""Live progress of `invoke repro` in a non-terminal (a CI log), against the real Docker engine.

The run's stdout is a pipe that the test reads while the run goes on; each line is stamped with the time it
arrived, so a run that only prints (or only flushes) at the end fails here.
"""
import json
import re
import subprocess
import sys
import threading
import time

import pytest

from projects import ROOT

pytestmark = pytest.mark.docker

STEPS = [
    {"id": "hello", "file": "hello.cu", "parent": None, "change": "baseline", "targets": ["sm_90a"],
     "compile": {"sm_90a": "ok"}, "expect": {"sm_90": "pass"}},
]


@pytest.fixture
def project(project_factory, toolchain_image):
    return project_factory(steps=STEPS)


def watch(project, *args, timeout=600) -> tuple[list[tuple[float, str]], float, int, str]:
    """Run `python -m invoke ...` with stdout piped; ([(arrival time, line)], exit time, exit code, stderr)."""
    env = project.env()
    env["GPUREPRO_HEARTBEAT_S"] = "1"
    env.pop("PYTHONUNBUFFERED", None)  # the engine must flush its own progress lines
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait(timeout=60)
    exited = time.monotonic()
    drain.join(timeout=10)
    return lines, exited, code, "".join(stderr)


def first(lines, pattern: str) -> tuple[int, float, str]:
    """(index, arrival time, text) of the first line matching pattern; fails the test when none does."""
    for i, (t, text) in enumerate(lines):
        if re.search(pattern, text):
            return i, t, text
    pytest.fail(f"no line matches {pattern!r} in:\n" + "\n".join(text for _, text in lines))


def table_header(lines) -> int:
    """Index of the final results table's header row."""
    return first(lines, r"\bstep\b.*\barch\b.*\bexpected\b.*\bobserved\b.*\bverdict\b")[0]


def test_progress_lines_arrive_while_the_run_goes_on(project):
    lines, exited, code, stderr = watch(project, "repro", "hello")
    assert code == 0, "\n".join(t for _, t in lines) + stderr
    step = json.loads((project.latest() / "steps" / "hello" / "result.json").read_text())
    assert step["cache"]["status"] == "miss"
    compile_s = step["compile_seconds"]

    i_compiling, t_compiling, text = first(lines, r"^\s*hello\[sm_90a\]: compiling\b")
    assert "cache hit" not in text
    i_result, t_result, result_line = first(lines, r"^\s*hello\[sm_90a\]: \w+ \(\w+\) — ")
    assert "cache miss" in result_line and f"compile {compile_s:.1f} s" in result_line
    # arrived while the compile ran, not in one burst at exit: the result line came a compile later
    assert t_compiling < t_result < exited
    assert t_result - t_compiling >= 0.5 * compile_s, (t_compiling, t_result, compile_s)
    if compile_s > 2:
        i_beat, t_beat, _ = first(lines, r"^\s*hello\[sm_90a\]: still compiling, \d+ s elapsed")
        assert i_compiling < i_beat < i_result and t_beat < exited
    # the step's result line is printed the moment it is known, before the final table
    assert i_compiling < i_result < table_header(lines)

    again, _, code, stderr = watch(project, "repro", "hello")
    assert code == 0, "\n".join(t for _, t in again) + stderr
    assert json.loads((project.latest() / "steps" / "hello" / "result.json").read_text())["cache"]["status"] == "hit"
    first(again, r"^\s*hello\[sm_90a\]: compiling: cache hit")
    assert not any(re.search(r"still compiling", t) for _, t in again)
    i_result, _, result_line = first(again, r"^\s*hello\[sm_90a\]: \w+ \(\w+\) — ")
    assert "cache hit" in result_line
    assert i_result < table_header(again)
