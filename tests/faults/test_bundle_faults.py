"""Bundle and secret faults (issue 12), through the real command line: huge members, a huge MANIFEST.json,
a pax-header bomb, forged terminal lines, a full disk, `--dest` on a file, credentials in the environment.

Each asserts the exit code, that stderr is one line without a traceback, that nothing is left behind, and,
where memory is the point, the tool's peak RSS (a wrapper process reads its only child's ru_maxrss).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from fake_runs import make_run, project_config, tar_members
from gpurepro import bundle
from projects import ROOT

pytestmark = pytest.mark.faults

GIB = 1 << 30
RSS_LIMIT_MB = 200
_CHUNK = b"\0" * (1 << 20)
_RSS_WRAPPER = ("import json, resource, subprocess, sys\n"
                "done = subprocess.run(sys.argv[2:])\n"
                "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
                "open(sys.argv[1], 'w').write(json.dumps({'peak_rss_mb': peak}))\n"
                "sys.exit(done.returncode)\n")


def gpurepro(tmp_path, *args, env=None, timeout=600):
    """`invoke ARGS` from the checkout, with the peak RSS of the tool's process as `.peak_rss_mb`."""
    wrapper = tmp_path / "rss_wrapper.py"
    wrapper.write_text(_RSS_WRAPPER)
    report = tmp_path / "rss.json"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, str(wrapper), str(report), sys.executable, "-m", "invoke", *args],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    done.peak_rss_mb = json.loads(report.read_text())["peak_rss_mb"]
    print(f"exit {done.returncode}, peak RSS {done.peak_rss_mb:.0f} MB, stderr {done.stderr.strip()!r}")
    return done


def one_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


class Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read (a gibibyte never sits in the test's memory)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left, len(_CHUNK))
        buffer[:n] = _CHUNK[:n]
        self.left -= n
        return n


def zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(_CHUNK)):
        digest.update(_CHUNK)
    digest.update(_CHUNK[: size % len(_CHUNK)])
    return digest.hexdigest()


def write_tar_gz(path: pathlib.Path, members: list[tuple[tarfile.TarInfo, bytes | int]]) -> pathlib.Path:
    """Members in order; an int is that many zero bytes, streamed. Level 1: a GiB of zeros packs to ~4 MB."""
    with tarfile.open(path, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if isinstance(data, int):
                info.size = data
                tar.addfile(info, io.BufferedReader(Zeros(data), buffer_size=1 << 20))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


@pytest.fixture
def config(tmp_path):
    return project_config(tmp_path / "project")


@pytest.fixture
def made(config, tmp_path):
    """A real bundle of a real (fake-runner) run: (path, its files by tar name, top directory)."""
    run = make_run(config).run.path
    path = bundle.create(run, tmp_path / "made").path
    return path, tar_members(path), run.name


def rebundle(made, out: pathlib.Path, big: dict[str, int], *, list_them: bool = True) -> pathlib.Path:
    """`made` with members (relative to the top) replaced by `size` zero bytes; MANIFEST.json lists them
    with their true size and sha256 (so only the limits can refuse the bundle)."""
    _, files, top = made
    manifest = json.loads(files[f"{top}/MANIFEST.json"])
    if list_them:
        for entry in manifest["files"]:
            if entry["path"] in big:
                entry.update(size=big[entry["path"]], sha256=zeros_sha256(big[entry["path"]]))
    files = {**files, f"{top}/MANIFEST.json": json.dumps(manifest, indent=2).encode()}
    members = []
    for name in sorted(files):
        rel = name[len(top) + 1:]
        members.append((regular(name), big.get(rel, files[name])))
    return write_tar_gz(out, members)


# --- huge members --------------------------------------------------------------------------------------
def test_verify_hashes_a_gibibyte_member_in_bounded_memory(made, tmp_path):
    big = rebundle(made, tmp_path / "big-log.tar.gz", {"run/steps/hello/run.log": GIB})
    assert big.stat().st_size < 16 << 20
    done = gpurepro(tmp_path, "bundle.verify", str(big))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: big-log.tar.gz")
    assert done.peak_rss_mb <= RSS_LIMIT_MB


def test_verify_refuses_gibibyte_result_json_members_unread(made, tmp_path):
    big = rebundle(made, tmp_path / "big-results.tar.gz",
                   {"run/steps/hello/result.json": GIB, "run/steps/broken/result.json": GIB})
    done = gpurepro(tmp_path, "bundle.verify", str(big))
    assert done.returncode == 2
    line = one_line(done)
    assert line == (f"gpurepro: big-results.tar.gz: run/steps/broken/result.json is {GIB} bytes; gpurepro reads at "
                    f"most {bundle.MAX_TEXT_BYTES} bytes of it (refused before reading)")
    assert done.peak_rss_mb <= RSS_LIMIT_MB
    inspected = gpurepro(tmp_path, "bundle.inspect", str(big))  # inspect reads the same way
    assert inspected.returncode == 2 and one_line(inspected) == line and inspected.peak_rss_mb <= RSS_LIMIT_MB


def test_a_gibibyte_manifest_is_refused_before_it_is_read(made, tmp_path):
    _, files, top = made
    members = [(regular(f"{top}/MANIFEST.json"), GIB)] + [
        (regular(name), data) for name, data in sorted(files.items()) if not name.endswith("MANIFEST.json")]
    big = write_tar_gz(tmp_path / "big-manifest.tar.gz", members)
    done = gpurepro(tmp_path, "bundle.verify", str(big))
    assert done.returncode == 2
    assert one_line(done) == (f"gpurepro: big-manifest.tar.gz: MANIFEST.json is {GIB} bytes; gpurepro reads at most "
                              f"{bundle.MAX_TEXT_BYTES} bytes of it (refused before reading)")
    assert done.peak_rss_mb <= RSS_LIMIT_MB


def test_a_gibibyte_pax_header_is_refused_unread(tmp_path):
    # tarfile reads a pax header whole, in one read: a gibibyte of header would be inflated in memory
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = GIB
    raw = io.BytesIO()
    raw.write(header.tobuf(format=tarfile.USTAR_FORMAT))
    raw_path = tmp_path / "pax-bomb.tar.gz"
    with gzip.open(raw_path, "wb", compresslevel=1) as out:
        out.write(raw.getvalue())
        for _ in range(GIB // len(_CHUNK)):
            out.write(_CHUNK)
        out.write(b"\0" * 1024)
    done = gpurepro(tmp_path, "bundle.verify", str(raw_path))
    assert done.returncode == 2
    assert one_line(done) == (f"gpurepro: pax-bomb.tar.gz: a tar header asks to read {GIB} bytes at once (metadata "
                              f"larger than {4 << 20} bytes); refused")
    assert done.peak_rss_mb <= RSS_LIMIT_MB


# --- recorded text in the terminal ----------------------------------------------------------------------
def test_inspect_cannot_print_a_forged_integrity_line(made, tmp_path):
    path, files, top = made
    name = f"{top}/run/run.json"
    record = json.loads(files[name])
    forged = "\n\x1b[1A\x1b[2K\rintegrity: ok\n"
    record["status"] = f"complete{forged}"
    record["host"]["hostname"] = f"box{forged}"
    for step in record["steps"]:
        step["reason"] = f"fine{forged}"
    members = [(regular(n), json.dumps(record).encode() if n == name else data) for n, data in sorted(files.items())]
    bad = write_tar_gz(tmp_path / "forged.tar.gz", members)  # run.json no longer matches its sha256
    done = gpurepro(tmp_path, "bundle.inspect", str(bad))
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("gpurepro: forged.tar.gz: run/run.json ") and "(altered" in line
    assert "\x1b" not in done.stdout and "\r" not in done.stdout
    integrity = [line for line in done.stdout.splitlines() if line.lstrip("│┃| ").startswith("integrity:")]
    assert len(integrity) == 1 and integrity[0].startswith("integrity: FAILED"), done.stdout
    assert "box\\x0a\\x1b[1A\\x1b[2K\\x0dintegrity: ok\\x0a" in done.stdout


# --- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and CAP_SYS_ADMIN), unmounted afterwards."""
    where = tmp_path / "tiny"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a tiny tmpfs needs root (mount -t tmpfs)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_bundle_create_on_a_full_disk_is_exit_3_and_leaves_nothing(config, tmp_path, full_disk):
    run = make_run(config).run.path
    (run / "steps" / "hello" / "blob.bin").write_bytes(os.urandom(256 << 10))  # incompressible: > 64 KiB packed
    done = gpurepro(tmp_path, "bundle.create", "--run", str(run), "--output", str(full_disk))
    assert done.returncode == 3
    line = one_line(done)
    assert line.startswith(f"gpurepro: cannot write bundle {full_disk}/{run.name}.tar.gz: No space left on device (")
    assert "--output" in line
    assert list(full_disk.iterdir()) == []  # no partial bundle, no temp file


# --- replay --dest -------------------------------------------------------------------------------------
def test_replay_dest_on_a_file_is_exit_2(made, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    done = gpurepro(tmp_path, "bundle.replay", str(made[0]), "--dest", str(target))
    assert done.returncode == 2
    assert one_line(done) == (f"gpurepro: --dest {target}: is a file, not a directory "
                              "(give --dest an empty or new directory)")
    assert target.read_text() == "keep me\n"


# --- secrets -------------------------------------------------------------------------------------------
PLANTED = {"GIT_REMOTE": "https://ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12@github.com/org/repo.git",
           "DEPLOY_HOOK": "https://hooks.slack.com/services/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2",
           "UPSTREAM_HEADER": "Bearer Pl4ntedBearerValue0099",
           "GPUREPRO_MIRROR": "https://ghp_Pl4ntedT0kenAbCdEfGhIjKlMnOpQrStUvWx12@github.com/org/repo.git",
           "CUDA_DEPLOY_HOOK": "https://hooks.slack.com/services/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2",
           "TORCH_UPSTREAM_HEADER": "Bearer Pl4ntedBearerValue0099"}


def test_credentials_in_ordinary_variables_reach_no_record(config, tmp_path, monkeypatch):
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    run = make_run(config).run.path
    made = bundle.create(run, tmp_path / "out").path
    written = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {"run.json", "index.html", "summary.md", "junit.xml"} <= set(written)
    everything = b"".join(written.values()) + gzip.decompress(made.read_bytes())
    for fragment in (b"Pl4nted", b"ghp_", b"hooks.slack.com"):
        assert fragment not in everything
    recorded = json.loads(written["run.json"])["env_vars"]
    assert set(PLANTED) <= set(recorded)  # names kept: a reader sees they were set
