"""Tar archives for the Docker copy API, built and read in memory by pure functions.

`put_archive` takes a tar stream and `get_archive` returns one; building and reading them here, with
fixed owners and mtimes, keeps copies reproducible and testable without a daemon.
"""
from __future__ import annotations

import io
import pathlib
import tarfile
from collections.abc import Mapping

EXECUTABLE_MODE = 0o755
FILE_MODE = 0o644
FIXED_MTIME = 0  # deterministic archives: identical inputs give identical bytes


def build_tar(files: Mapping[str, bytes], *, executable: frozenset[str] = frozenset(), prefix: str = "") -> bytes:
    """A tar of `files` (relative POSIX path -> content), sorted, with parent directories listed.

    prefix: a directory path every name is put under. Its own directories get no entries: an extractor makes
    the missing ones with its defaults and leaves existing ones as they are (a tar unpacked at / must not
    reset the mode of /tmp)."""
    buffer = io.BytesIO()
    dirs: set[str] = set()
    base = prefix.strip("/")
    if base:
        _safe_relpath(base)
        parts = base.split("/")
        dirs.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            rel = _safe_relpath(name)
            full = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
            parts = full.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in dirs:
                    dirs.add(directory)
                    tar.addfile(_info(directory, tarfile.DIRTYPE, EXECUTABLE_MODE, 0))
            data = files[name]
            info = _info(full, tarfile.REGTYPE, EXECUTABLE_MODE if name in executable else FILE_MODE, len(data))
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _safe_relpath(name: str) -> str:
    path = pathlib.PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"refusing unsafe archive path: {name!r}")
    return path.as_posix()


def read_tar(data: bytes, *, strip_top: bool = True, max_bytes: int = 2 << 30) -> dict[str, bytes]:
    """Regular files of a tar stream (as `get_archive` returns it) as relative path -> bytes.

    `get_archive(dir)` puts everything under the directory's own name; `strip_top` removes it.
    Links, devices and paths escaping the tree are skipped: they are never artifacts of a repro.
    """
    files: dict[str, bytes] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not member.isreg():
                continue
            parts = pathlib.PurePosixPath(member.name).parts
            if strip_top and len(parts) > 1:
                parts = parts[1:]
            if not parts or ".." in parts or pathlib.PurePosixPath(member.name).is_absolute():
                continue
            total += member.size
            if total > max_bytes:
                raise ValueError(f"archive larger than {max_bytes} bytes")
            extracted = tar.extractfile(member)
            files["/".join(parts)] = extracted.read() if extracted else b""
    return files
