"""Many commands through one exec: the script that runs them and the parser of what it streams back.

Each Docker exec costs the daemon a process spawn and three API round trips (about 60 ms on two cores); a warm
rerun of the chain runs one `--preflight-only` per step. The batch script runs every command in turn, each
under its own coreutils `timeout` (and the run marker, so `cancel` finds it), its output to a file; then it
writes one frame per command to stdout:

    @@gpurepro-batch <index> <exit code> <start> <end> <size>\\n<size bytes of output>

With a directory to collect, one more frame follows (index = the number of commands, exit code = tar's): a tar
of that directory, less the files to drop; then the directory is removed, and its parent (the run's directory)
too when nothing else is left in it. So a warm run's steps go in with one put_archive and come back in the
same exec that ran them: no get_archive, no `rm` exec.

`BatchFrames` reads that stream incrementally and keeps each frame's output the way `exec` keeps one
command's (CappedOutput: head and tail within the cap), so a command that prints a gigabyte costs memory
of one cap here, as it would alone. Pure: tested without a daemon.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from ..classify import ExecResult
from .base import CappedOutput, Command

HEADER = b"@@gpurepro-batch "
HEADER_RE = re.compile(rb"@@gpurepro-batch (\d+) (-?\d+) ([0-9.,]+) ([0-9.,]+) (\d+)")
MAX_HEADER = 200
KILL_GRACE_S = 5

# EPOCHREALTIME (bash 5) costs no fork; `date +%s.%N` where it is missing. The locale may print a comma.
# The script's own stderr is dropped: bash reports a child killed by a signal ("Segmentation fault") there, which
# would land between frames; each command's own stderr goes to its frame.
_PRELUDE = r"""set -u
exec 2>/dev/null
out=$(mktemp) || exit 90
trap 'rm -f "$out"' EXIT
now() { if [ -n "${EPOCHREALTIME:-}" ]; then printf '%s' "$EPOCHREALTIME"; else date +%s.%N; fi; }
one() {
  i=$1; dir=$2; limit=$3; shift 3
  s=$(now)
  ( cd "$dir" && exec timeout -k KILL_GRACE "$limit" "$@" ) >"$out" 2>&1 </dev/null
  rc=$?
  e=$(now)
  printf '@@gpurepro-batch %s %s %s %s %s\n' "$i" "$rc" "$s" "$e" "$(wc -c <"$out" | tr -d ' ')"
  cat "$out"
}
collect() {
  i=$1; root=$2; shift 2
  for f in "$@"; do rm -f -- "$root/$f"; done
  tar -C "$root" -cf "$out" .
  rc=$?
  printf '@@gpurepro-batch %s %s 0 0 %s\n' "$i" "$rc" "$(wc -c <"$out" | tr -d ' ')"
  cat "$out"
  rm -rf -- "$root"
  rmdir -- "$(dirname -- "$root")"
}
""".replace("KILL_GRACE", str(KILL_GRACE_S))


def batch_script(commands: Sequence[Command], run_tag: str = "", *, collect: str | None = None,
                 drop: Sequence[str] = ()) -> str:
    """The bash script that runs `commands` in order and frames their outputs (see the module's doc)."""
    marker = ["env", f"GPUREPRO_RUN={run_tag}"] if run_tag else []
    lines = [_PRELUDE]
    for index, command in enumerate(commands):
        argv = [*marker, *command.argv]
        lines.append(f"one {index} {shlex.quote(command.workdir)} {int(command.timeout_s)} {shlex.join(argv)}")
    if collect is not None:
        lines.append(f"collect {len(commands)} {shlex.quote(collect)} {shlex.join(sorted(drop))}".rstrip())
    return "\n".join(lines) + "\n"


class BatchFrames:
    """The batch's stream, frame by frame, into one CappedOutput per command."""

    def __init__(self, count: int, cap: int, *, collect: bool = False, max_collect_bytes: int = 2 << 30):
        self.count = count  # commands; with `collect`, one more frame (the tar) follows them
        self.cap = cap
        self.collect = collect
        self.max_collect_bytes = max_collect_bytes
        self.collected = bytearray()  # the tar frame's bytes, whole (read_tar checks it)
        self.collect_code: int | None = None
        self.outputs: list[CappedOutput] = []
        self.headers: list[tuple[int, float, float, int]] = []  # exit code, start, end, size
        self.problem: str | None = None
        self._pending = b""  # an unfinished header line
        self._left = 0  # output bytes still owed to the current frame

    @property
    def complete(self) -> int:
        """Frames read to their end."""
        return len(self.headers) - (1 if self._left else 0)

    def feed(self, data: bytes) -> None:
        while data and self.problem is None:
            if self._left:
                part, data = data[:self._left], data[self._left:]
                if len(self.headers) > self.count:
                    self.collected += part
                else:
                    self.outputs[-1].feed(part)
                self._left -= len(part)
                continue
            self._pending += data
            data = b""
            end = self._pending.find(b"\n")
            if end < 0:
                if len(self._pending) > MAX_HEADER or not HEADER.startswith(self._pending[:len(HEADER)]):
                    self._fail(self._pending)
                return
            line, data = self._pending[:end], self._pending[end + 1:]
            self._pending = b""
            match = HEADER_RE.fullmatch(line)
            frames = self.count + (1 if self.collect else 0)
            if not match or int(match[1]) != len(self.headers) or len(self.headers) >= frames:
                self._fail(line)
                return
            code, start, stop, size = int(match[2]), _seconds(match[3]), _seconds(match[4]), int(match[5])
            self.headers.append((code, start, stop, size))
            if len(self.headers) > self.count:  # the collected directory's tar
                if size > self.max_collect_bytes:
                    self.problem = f"the collected files are {size} bytes, over {self.max_collect_bytes}"
                    return
                self.collect_code = code
            else:
                self.outputs.append(CappedOutput(self.cap))
            self._left = size

    def _fail(self, seen: bytes) -> None:
        text = seen[:80].decode("utf-8", errors="replace").strip()
        self.problem = f"unexpected output from the batch script: {text!r}"

    def results(self, commands: Sequence[Command]) -> list[ExecResult] | None:
        """One ExecResult per command, or None when the stream did not hold every frame whole."""
        frames = len(commands) + (1 if self.collect else 0)
        if self.problem or self._pending or self._left or len(self.headers) != frames:
            return None
        out = []
        for command, (code, start, stop, _size), capture in zip(commands, self.headers, self.outputs):
            seconds = max(0.0, stop - start)
            timed_out = code in (124, 137) and seconds >= command.timeout_s - 1
            out.append(capture.result(list(command.argv), exit_code=code, seconds=seconds, timed_out=timed_out,
                                      timeout_s=command.timeout_s))
        return out


def _seconds(raw: bytes) -> float:
    return float(raw.replace(b",", b".").decode())
