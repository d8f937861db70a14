"""Runners without a Docker engine: output capping, the host runner's exec, error naming."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import requests.exceptions

from gpurepro.config import load_config
from gpurepro.errors import EXIT_INFRA, DaemonGoneError, NvccMissingError, ToolMissingError
from gpurepro.runners.base import CappedOutput, short_command
from gpurepro.runners.docker import NOT_FOUND_RE, _transport_detail
from gpurepro.runners.host import HostRunner

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIB = 1 << 30


def host_runner(tmp_path, **env) -> HostRunner:
    return HostRunner(load_config(ROOT / "gpurepro.yaml", env={"GPUREPRO_HOST_WORKDIR": str(tmp_path), **env}))


# --- CappedOutput ---------------------------------------------------------------------------------
def test_small_output_is_kept_whole():
    capture = CappedOutput(4096)
    for part in (b"a\n", b"", "ü\n".encode()):
        capture.feed(part)
    assert capture.text() == "a\nü\n" and capture.total == 5 and not capture.truncated


def test_large_output_keeps_head_and_tail_with_marker():
    capture = CappedOutput(64 * 1024)
    lines = [f"line {i}\n".encode() for i in range(200_000)]
    for line in lines:
        capture.feed(line)
    text = capture.text()
    total = sum(map(len, lines))
    assert capture.total == total and capture.truncated
    assert text.startswith("line 0\nline 1\n") and text.endswith("line 199999\n")
    head, marker, tail = text.partition("\n[... ")
    omitted = int(tail.split(" bytes omitted ...]\n", 1)[0])
    kept = len(head) + 1 + len(tail.split("...]\n", 1)[1])
    assert kept + omitted == total  # the marker says exactly what is missing
    assert len(head) <= 16 * 1024 and len(text) <= 64 * 1024 + 100
    assert all(line.startswith("line ") for line in text.splitlines() if not line.startswith("[..."))


def test_single_huge_chunk_is_trimmed():
    capture = CappedOutput(8192)
    capture.feed(b"x" * 1_000_000)
    value = capture.value()
    assert len(value) < 8192 + 64 and capture.total == 1_000_000
    assert b"[... " in value


def test_short_command():
    assert short_command(["nvcc", "-o", "a b"]) == "nvcc -o 'a b'"
    assert len(short_command(["nvcc", *["-I/very/long/include/path"] * 20])) == 80


# --- host runner -----------------------------------------------------------------------------------
def test_host_exec_merges_streams_and_counts(tmp_path):
    result = host_runner(tmp_path).exec(["sh", "-c", "echo out; echo err >&2; exit 3"], workdir=str(tmp_path),
                                        timeout_s=10)
    assert result.exit_code == 3 and result.output == "out\nerr\n"
    assert result.output_bytes == 8 and not result.output_truncated and not result.timed_out


def test_host_exec_timeout_kills_the_group(tmp_path):
    result = host_runner(tmp_path).exec(["sh", "-c", "echo started; sleep 60 & sleep 60"], workdir=str(tmp_path),
                                        timeout_s=1)
    assert result.timed_out and result.output == "started\n" and result.seconds < 10


def test_host_exec_respects_configured_cap(tmp_path):
    config = tmp_path / "gpurepro.yaml"
    text = (ROOT / "gpurepro.yaml").read_text().replace("run:\n  timeout_s: 120", "run:\n  timeout_s: 120\n  log_cap_bytes: 8192")
    config.write_text(text)
    runner = HostRunner(load_config(config, env={"GPUREPRO_HOST_WORKDIR": str(tmp_path)}))
    result = runner.exec(["sh", "-c", "seq 1 100000"], workdir=str(tmp_path), timeout_s=30)
    assert result.output_truncated and result.output_bytes == len("\n".join(map(str, range(1, 100001)))) + 1
    assert len(result.output) < 8192 + 64 and result.output.endswith("100000\n") and result.output.startswith("1\n2\n")


def test_host_exec_of_a_gigabyte_stays_small(tmp_path):
    """Peak RSS of a process running a 1 GiB writer through the host runner (measured in a fresh process)."""
    script = f"""
import json, re, sys
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
from test_runners import host_runner
import pathlib
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size at fork (pytest's, after a long session)
hwm = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = hwm()
r = host_runner(pathlib.Path({str(tmp_path)!r})).exec(
    ["sh", "-c", "head -c {GIB} /dev/zero | tr '\\\\0' x"], workdir="/", timeout_s=300)
print(json.dumps(dict(bytes=r.output_bytes, truncated=r.output_truncated, kept=len(r.output), code=r.exit_code,
                      before_mb=before / 1024, peak_mb=hwm() / 1024)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["bytes"] == GIB and facts["truncated"] and facts["code"] == 0
    assert facts["kept"] <= 8 * 1024 * 1024 + 100
    assert facts["peak_mb"] <= 200, facts


def test_host_missing_nvcc_is_infrastructure_with_the_fix(tmp_path):
    config = tmp_path / "gpurepro.yaml"
    config.write_text((ROOT / "gpurepro.yaml").read_text().replace("nvcc: nvcc", "nvcc: nvcc-h12-absent"))
    runner = HostRunner(load_config(config, env={"GPUREPRO_HOST_WORKDIR": str(tmp_path)}))
    with pytest.raises(NvccMissingError) as info:
        runner.start()
    assert info.value.exit_code == EXIT_INFRA and "nvcc-h12-absent not found in PATH on this host" in info.value.one_line()
    assert "compile.nvcc" in info.value.one_line()
    with pytest.raises(NvccMissingError):
        runner.exec(["nvcc-h12-absent", "--version"], workdir=str(tmp_path), timeout_s=5)
    with pytest.raises(ToolMissingError) as other:
        runner.exec(["h12-no-such-tool"], workdir=str(tmp_path), timeout_s=5)
    assert not isinstance(other.value, NvccMissingError)


def test_host_probe_requires_nvcc_only_when_asked(tmp_path):
    config = tmp_path / "gpurepro.yaml"
    config.write_text((ROOT / "gpurepro.yaml").read_text().replace("nvcc: nvcc", "nvcc: nvcc-h12-absent"))
    runner = HostRunner(load_config(config, env={"GPUREPRO_HOST_WORKDIR": str(tmp_path)}))
    facts = runner.probe("nvcc-h12-absent")  # kernels.test needs no nvcc
    assert facts.values["nvcc_path"] == ""
    with pytest.raises(NvccMissingError, match="nvcc-h12-absent not found"):
        runner.probe("nvcc-h12-absent", require_nvcc=True)


# --- docker runner helpers (no engine needed) -----------------------------------------------------
@pytest.mark.parametrize("text, cmd", [
    ("env: 'nvcc': No such file or directory\n", "nvcc"),
    ("env: \u2018nvcc\u2019: No such file or directory", "nvcc"),
    ("timeout: failed to run command \u2018/opt/x/nvcc\u2019: No such file or directory\n", "/opt/x/nvcc"),
])
def test_not_found_messages(text, cmd):
    assert NOT_FOUND_RE.match(text.strip()).group("cmd") == cmd


def test_not_found_ignores_program_output():
    assert NOT_FOUND_RE.match("error: 'nvcc': No such file or directory") is None


def test_transport_detail_is_the_innermost_reason():
    inner = ConnectionRefusedError(111, "Connection refused")
    outer = requests.exceptions.ConnectionError(inner)
    assert _transport_detail(outer) == "Connection refused"


def test_daemon_gone_on_start_names_the_socket(tmp_path):
    """A real client on a socket where no daemon listens: the start names that daemon, in one line."""
    import docker

    from gpurepro.runners.docker import DockerRunner

    socket = tmp_path / "nobody.sock"
    client = docker.DockerClient(base_url=f"unix://{socket}", timeout=5, version="1.43")  # no version query
    runner = DockerRunner(client, load_config(ROOT / "gpurepro.yaml", env={}), container_name="h12-none")
    with pytest.raises(DaemonGoneError) as info:
        runner.start()
    line = info.value.one_line()
    assert line.startswith(f"Docker daemon at unix://{socket} stopped answering")
    assert "ConnectionError(" not in line and "\n" not in line and info.value.exit_code == EXIT_INFRA
