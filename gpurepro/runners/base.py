"""The small interface every runner keeps: copy in, execute, copy out, describe where it runs."""
from __future__ import annotations

import abc
import collections
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..archs import parse_compute_capability
from ..classify import ExecResult
from ..config import DEFAULT_LOG_CAP_BYTES  # config run.log_cap_bytes
from ..errors import NvccMissingError

LINE_SNAP_BYTES = 4096  # cut the kept head and tail at a line break when one is this close


class CappedOutput:
    """A command's output kept in bounded memory: the first quarter of `cap` bytes and the last three quarters.

    A program that prints a gigabyte must not make the tool hold a gigabyte (nor write it to run.log); the
    end of the output is where errors are, the start is where the configuration is. `total` counts it all.
    """

    def __init__(self, cap: int = DEFAULT_LOG_CAP_BYTES):
        self.cap = max(int(cap), 1024)
        self.head_cap = self.cap // 4
        self.tail_cap = self.cap - self.head_cap
        self.head = bytearray()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0
        self.total = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
            if not data:
                return
        self._tail.append(bytes(data))
        self._tail_len += len(data)
        # drop whole chunks once the rest still covers the tail: memory stays within cap + one chunk
        while len(self._tail) > 1 and self._tail_len - len(self._tail[0]) >= self.tail_cap:
            self._tail_len -= len(self._tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def value(self) -> bytes:
        tail = b"".join(self._tail)
        if not self.truncated:
            return bytes(self.head) + tail
        head = bytes(self.head)
        tail = tail[-self.tail_cap:]
        cut = head.rfind(b"\n", len(head) - LINE_SNAP_BYTES)
        if cut >= 0:
            head = head[:cut + 1]
        cut = tail.find(b"\n", 0, LINE_SNAP_BYTES)
        if cut >= 0:
            tail = tail[cut + 1:]
        omitted = self.total - len(head) - len(tail)
        if not head.endswith(b"\n"):
            head += b"\n"
        return head + f"[... {omitted} bytes omitted ...]\n".encode() + tail

    def text(self) -> str:
        return self.value().decode("utf-8", errors="replace")

    def result(self, argv, **fields) -> ExecResult:
        return ExecResult(argv=list(argv), output=self.text(), output_bytes=self.total,
                          output_truncated=self.truncated, **fields)


def short_command(argv, limit: int = 80) -> str:
    """A command as a user would recognise it in one line (compile lines run to a kilobyte)."""
    from ..cache import _RSS_SCRIPT

    if len(argv) > 3 and list(argv[1:3]) == ["-c", _RSS_SCRIPT]:  # the peak-RSS wrapper: name what it measures
        argv = argv[3:]
    text = shlex.join(str(a) for a in argv)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"
    driver: str = ""

    @property
    def cc(self) -> tuple[int, int]:
        return parse_compute_capability(self.compute_capability)

    @property
    def arch(self) -> str:
        major, minor = self.cc
        return f"sm_{major}{minor}"


@dataclass
class Facts:
    """What run.json records about where the steps ran."""

    backend: str
    values: dict[str, str] = field(default_factory=dict)
    gpu: GpuInfo | None = None

    @property
    def cuda_home(self) -> str | None:
        nvcc = self.values.get("nvcc_path")
        return nvcc.rsplit("/bin/", 1)[0] if nvcc and "/bin/" in nvcc else None


# Runs inside the container or on the host; prints key=value lines. {nvcc} and {flashinfer} are filled in.
PROBE_SCRIPT = r"""
nvcc_path=$(command -v {nvcc} 2>/dev/null)
nvcc_path=$(readlink -f "$nvcc_path" 2>/dev/null || echo "$nvcc_path")
echo "nvcc_path=$nvcc_path"
[ -n "$nvcc_path" ] && echo "nvcc_version=$("$nvcc_path" --version | grep -o 'release [0-9.]*, V[0-9.]*' | head -1)"
echo "cuobjdump_path=$(command -v cuobjdump 2>/dev/null)"
echo "host_compiler=$(${{CXX:-c++}} --version 2>/dev/null | head -1)"
echo "python3_path=$(command -v python3 2>/dev/null)"
echo "flashinfer_root={flashinfer}"
echo "flashinfer_version=$(head -1 {flashinfer}/version.txt 2>/dev/null)"
v={flashinfer}/3rdparty/cutlass/include/cutlass/version.h
[ -f "$v" ] && echo "cutlass_version=$(awk '/#define CUTLASS_(MAJOR|MINOR|PATCH) /{{printf "%s%s", s, $3; s="."}}' "$v")"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1 | sed 's/^/gpu_smi=/'
fi
if [ -n "$nvcc_path" ] && [ -x "$(dirname "$nvcc_path")/__nvcc_device_query" ]; then
  echo "gpu_device_query=$("$(dirname "$nvcc_path")/__nvcc_device_query" 2>/dev/null | head -1)"
fi
ls /dev/nvidia0 >/dev/null 2>&1 && echo "dev_nvidia=yes" || echo "dev_nvidia=no"
echo "kernel=$(uname -r)"
echo "os=$(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")"
echo "cpus=$(nproc 2>/dev/null)"
"""


def parse_probe(text: str) -> tuple[dict[str, str], GpuInfo | None]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z][a-z0-9_]*", key):
            values[key] = value.strip()
    gpu = None
    smi = values.get("gpu_smi", "")
    fields = [f.strip() for f in smi.split(",")]
    if len(fields) >= 2 and re.fullmatch(r"\d+\.\d+", fields[1]):
        gpu = GpuInfo(name=fields[0], compute_capability=fields[1], driver=fields[2] if len(fields) > 2 else "")
    elif values.get("dev_nvidia") == "yes" and re.fullmatch(r"\d{2,3}", values.get("gpu_device_query", "")):
        cc = values["gpu_device_query"]
        gpu = GpuInfo(name="unknown NVIDIA GPU", compute_capability=f"{cc[:-1]}.{cc[-1]}")
    return values, gpu


@dataclass(frozen=True)
class Command:
    """One command of an `exec_many` batch."""

    argv: tuple[str, ...]
    workdir: str
    timeout_s: float


@dataclass
class Batch:
    """What `exec_many` returns: each command's result, and the files it collected (None: none asked for)."""

    results: list[ExecResult]
    files: dict[str, bytes] | None = None


class Runner(abc.ABC):
    """Where steps are compiled and run. Paths are in the runner's own filesystem."""

    name: str

    @abc.abstractmethod
    def start(self) -> None:
        """Make the place ready (container up, work directory present); raise InfraError if it cannot be."""

    @abc.abstractmethod
    def put_files(self, dest: str, files: dict[str, bytes], *, executable: frozenset[str] = frozenset()) -> None:
        """Write `files` (relative path -> bytes) under the directory `dest`, creating it."""

    @abc.abstractmethod
    def exec(self, argv: list[str], *, workdir: str, timeout_s: float, env: dict[str, str] | None = None) -> ExecResult:
        """Run argv with a wall-clock limit; the result says how it ended (never raises for a failing command).

        Output (stdout and stderr together) is streamed and capped at `log_cap_bytes()` (head and tail kept,
        `output_bytes` the full size). Raises InfraError when the place itself fails (container stopped,
        daemon gone) and ToolMissingError/NvccMissingError when argv[0] does not exist there.
        """

    def exec_many(self, commands: Sequence[Command], *, collect: str | None = None,
                  drop: frozenset[str] = frozenset()) -> "Batch":
        """Run `commands` one after another, each as `exec` would (own time limit, own capped output); the
        results in the same order. With `collect` (a directory under the work root), then copy out every file
        under it except `drop` (paths relative to it) and remove it. Raises like `exec` when the place itself
        fails. Backends where every call is a round trip through an API (docker) do it all in one."""
        results = [self.exec(list(c.argv), workdir=c.workdir, timeout_s=c.timeout_s) for c in commands]
        files = None
        if collect is not None:
            files = {name: data for name, data in self.get_files(collect).items() if name not in drop}
            self.remove_dir(collect)
        return Batch(results, files)

    def log_cap_bytes(self) -> int:
        config = getattr(self, "config", None)
        return getattr(getattr(config, "run", None), "log_cap_bytes", DEFAULT_LOG_CAP_BYTES)

    def where(self) -> str:
        """Where commands run, for messages ("container vllm-dev (image ...)", "PATH on this host")."""
        return self.name

    @abc.abstractmethod
    def get_files(self, path: str) -> dict[str, bytes]:
        """Every regular file under `path`, relative path -> bytes."""

    def read_file(self, path: str) -> bytes | None:
        """One regular file's bytes; None when it is not there."""
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.get_files(parent or "/").get(name)

    @abc.abstractmethod
    def remove_dir(self, path: str) -> None:
        """Delete a work directory this tool created."""

    @abc.abstractmethod
    def work_root(self) -> str:
        """The directory under which runs are laid out."""

    @abc.abstractmethod
    def flashinfer_root(self) -> str:
        """Where FlashInfer (with 3rdparty/cutlass) lives for this runner."""

    run_tag: str = ""  # the current run's id; commands carry it so `cancel` can find them

    def cancel(self, path: str) -> None:
        """Stop this run's commands still running and remove its work directory (on Ctrl-C)."""
        self.remove_dir(path)

    def describe(self) -> dict[str, str]:
        """Backend-specific facts for run.json (image id and digest, container, host)."""
        return {}

    def close(self) -> None:
        """Release what this runner holds for the command's duration (not the reusable container)."""

    def probe_script(self, nvcc: str) -> str:
        return PROBE_SCRIPT.format(nvcc=shlex.quote(nvcc), flashinfer=self.flashinfer_root())

    def probe_text(self, script: str) -> str:
        """What the probe script prints here (a backend may remember it: see DockerRunner)."""
        return self.exec(["bash", "-c", script], workdir="/", timeout_s=60).output

    def probe(self, nvcc: str, *, require_nvcc: bool = False) -> Facts:
        """Facts about the toolchain and GPU. With require_nvcc, a missing nvcc is an NvccMissingError
        (exit 3, with the fix) before anything compiles; kernels.test, which needs no nvcc, leaves it off."""
        values, gpu = parse_probe(self.probe_text(self.probe_script(nvcc)))
        if require_nvcc and not values.get("nvcc_path"):
            raise NvccMissingError(nvcc, self.where())
        values.update(self.describe())
        return Facts(backend=self.name, values=values, gpu=gpu)
