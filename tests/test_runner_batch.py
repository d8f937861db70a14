"""The batch protocol of gpurepro/runners/batch.py: the script run by the host's bash (no daemon), the frame
parser fed in every chunking."""
import random
import subprocess

import pytest

from gpurepro.runners.base import Command
from gpurepro.runners.batch import BatchFrames, batch_script

CAP = 4096


def run_script(commands, tag=""):
    done = subprocess.run(["bash", "-c", batch_script(commands, tag), "gpurepro-batch"], capture_output=True,
                          timeout=60)
    return done.returncode, done.stdout, done.stderr


def parse(stream: bytes, commands, chunking=None):
    frames = BatchFrames(len(commands), CAP)
    if chunking is None:
        frames.feed(stream)
    else:
        i = 0
        while i < len(stream):
            n = chunking()
            frames.feed(stream[i:i + n])
            i += n
    return frames


def test_each_command_keeps_its_own_exit_output_and_directory(tmp_path):
    (tmp_path / "a b").mkdir()
    commands = [Command(("sh", "-c", "echo out; echo err >&2; exit 7"), "/", 30),
                Command(("pwd",), str(tmp_path / "a b"), 30),
                Command(("printf", "%s|", "it's", "$HOME", "a;b"), "/", 30),  # quoting survives the script
                Command(("sh", "-c", "kill -SEGV $$"), "/", 30),
                Command(("true",), str(tmp_path / "missing"), 30)]
    code, stream, stderr = run_script(commands)
    assert code == 0 and stderr == b""
    results = parse(stream, commands).results(commands)
    assert [r.exit_code for r in results][:4] == [7, 0, 0, 139]
    assert results[0].output == "out\nerr\n"
    assert results[1].output == f"{tmp_path / 'a b'}\n"
    assert results[2].output == "it's|$HOME|a;b|"
    assert results[3].signal == "SIGSEGV"
    assert results[4].exit_code != 0 and "missing" in results[4].output  # cd failed: that command's failure
    assert all(r.seconds >= 0 for r in results) and results[0].argv == ["sh", "-c", "echo out; echo err >&2; exit 7"]


def test_a_command_past_its_limit_is_timed_out_and_the_next_still_runs():
    commands = [Command(("sleep", "20"), "/", 1), Command(("echo", "after"), "/", 30)]
    code, stream, _ = run_script(commands)
    slow, after = parse(stream, commands).results(commands)
    assert slow.timed_out and slow.exit_code == 124 and 0.9 < slow.seconds < 8
    assert (after.exit_code, after.output) == (0, "after\n")


def test_the_run_marker_is_on_each_commands_command_line():
    script = batch_script([Command(("./step01", "--preflight-only"), "/w/step01", 120)], "RUN-ID")
    assert "env GPUREPRO_RUN=RUN-ID ./step01 --preflight-only" in script  # what `cancel` pkills by
    assert "GPUREPRO_RUN" not in batch_script([Command(("true",), "/", 5)])


@pytest.mark.parametrize("seed", range(5))
def test_frames_parse_the_same_in_any_chunking(seed):
    commands = [Command(("sh", "-c", f"head -c {n} /dev/zero | tr '\\0' y; echo; exit {n % 3}"), "/", 30)
                for n in (0, 10, 5000, 3 * CAP)]
    _, stream, _ = run_script(commands)
    whole = parse(stream, commands).results(commands)
    rng = random.Random(seed)
    pieces = parse(stream, commands, chunking=lambda: rng.randint(1, 700)).results(commands)
    assert [(r.exit_code, r.output, r.output_bytes, r.output_truncated) for r in pieces] == \
           [(r.exit_code, r.output, r.output_bytes, r.output_truncated) for r in whole]
    loud = whole[3]
    assert loud.output_truncated and loud.output_bytes == 3 * CAP + 1 and len(loud.output) < CAP + 100


def test_a_stream_that_is_not_frames_or_stops_short_is_no_result():
    commands = [Command(("true",), "/", 5), Command(("true",), "/", 5)]
    junk = parse(b"bash: something went wrong\n", commands)
    assert junk.problem and "something went wrong" in junk.problem and junk.results(commands) is None
    one_frame = b"@@gpurepro-batch 0 0 1.0 1.5 3\nabc"
    short = parse(one_frame, commands)
    assert short.problem is None and short.complete == 1 and short.results(commands) is None
    cut = parse(one_frame[:-1], commands)
    assert cut.complete == 0 and cut.results(commands) is None
    out_of_order = parse(b"@@gpurepro-batch 1 0 1 2 0\n", commands)
    assert out_of_order.problem and out_of_order.results(commands) is None
    too_many = parse(one_frame + b"@@gpurepro-batch 1 0 1 2 0\n@@gpurepro-batch 2 0 1 2 0\n", commands)
    assert too_many.problem


def test_a_comma_decimal_clock_is_read():
    commands = [Command(("true",), "/", 5)]
    (result,) = parse(b"@@gpurepro-batch 0 0 100,25 101,75 0\n", commands).results(commands)
    assert result.seconds == pytest.approx(1.5)


def collect_run(tmp_path, commands, drop=()):
    root = tmp_path / "run" / "hits"
    script = batch_script(commands, collect=str(root), drop=drop)
    done = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    frames = BatchFrames(len(commands), CAP, collect=True)
    frames.feed(done.stdout)
    return root, frames


def test_collect_streams_the_directory_less_dropped_files_then_removes_it(tmp_path):
    from gpurepro.archive import read_tar

    root = tmp_path / "run" / "hits"
    (root / "a").mkdir(parents=True)
    (root / "a" / "prog").write_text("#!/bin/sh\necho made > out.txt\necho ran\n")
    (root / "a" / "prog").chmod(0o755)
    (root / "a" / "in.txt").write_text("in")
    commands = [Command(("./prog",), str(root / "a"), 30)]
    root, frames = collect_run(tmp_path, commands, drop=["a/prog"])
    (result,) = frames.results(commands)
    assert (result.exit_code, result.output) == (0, "ran\n")
    assert frames.collect_code == 0
    assert read_tar(bytes(frames.collected), strip_top=False) == {"a/in.txt": b"in", "a/out.txt": b"made\n"}
    assert not root.exists() and not root.parent.exists()  # the emptied run directory goes with it


def test_collect_leaves_a_parent_that_holds_something_else(tmp_path):
    root = tmp_path / "run" / "hits"
    root.mkdir(parents=True)
    (tmp_path / "run" / "step07").mkdir()  # a compiling step of the same run
    _, frames = collect_run(tmp_path, [])
    assert frames.results([]) == [] and frames.collect_code == 0
    assert not root.exists() and (tmp_path / "run" / "step07").is_dir()


def test_a_missing_collect_frame_is_no_result():
    commands = [Command(("true",), "/", 5)]
    frames = BatchFrames(1, CAP, collect=True)
    frames.feed(b"@@gpurepro-batch 0 0 1 2 0\n")
    assert frames.results(commands) is None
    frames.feed(b"@@gpurepro-batch 1 0 0 0 3\nabc")
    assert frames.results(commands) is not None and bytes(frames.collected) == b"abc"
