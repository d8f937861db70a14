"""Opening archives that came from someone else: check every member before anything touches the disk.

Two layers. `scan` walks the headers (stopping early past the limits, so a compression bomb is not
inflated in full) and refuses, with one line naming the member: more members or more unpacked bytes than
the limits, absolute paths, `..`, duplicate names, links whose target leaves the tree, devices, FIFOs and
any other special file. `extract` then writes with Python's own `filter="data"` as a second guard, into a
destination that must be empty, and removes what it wrote if anything fails.
"""
from __future__ import annotations

import pathlib
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass

from .errors import BadInputError


class UnsafeArchiveError(BadInputError):
    """An archive is corrupt, foreign or hostile: one line, exit 2."""


@dataclass(frozen=True)
class Limits:
    max_members: int = 50_000
    max_bytes: int = 8 << 30  # unpacked; a run directory with a few dozen binaries is far below this


DEFAULT_LIMITS = Limits()
_KIND = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
         tarfile.CONTTYPE: "a contiguous file"}


def open_archive(path: pathlib.Path, label: str | None = None) -> tarfile.TarFile:
    label = label or str(path)
    try:
        return tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        raise UnsafeArchiveError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UnsafeArchiveError(f"{label}: is a directory, not a bundle") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UnsafeArchiveError(f"{label}: not a readable tar archive ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, EOFError) or "unexpected end" in text.lower() or "truncated" in text.lower():
        return f"truncated: {text}"
    return text


def _clean_name(name: str) -> str | None:
    """The member name as a relative POSIX path, or None if it is absolute, escapes, or is empty."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _refuse(label: str, member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refused member {member.name!r}: {why}; nothing was extracted")


def scan(tar: tarfile.TarFile, label: str, limits: Limits = DEFAULT_LIMITS) -> list[tarfile.TarInfo]:
    """Every member, checked; UnsafeArchiveError on the first one that is not allowed."""
    members: list[tarfile.TarInfo] = []
    seen: dict[str, tarfile.TarInfo] = {}
    total = 0
    try:
        for member in tar:
            if len(members) >= limits.max_members:
                raise UnsafeArchiveError(f"{label}: more than {limits.max_members} members; refused")
            name = _clean_name(member.name)
            if name is None:
                why = "absolute path" if member.name.startswith(("/", "\\")) or member.name[1:2] == ":" else \
                    "path leaves the destination ('..')" if ".." in member.name.split("/") else "empty path"
                raise _refuse(label, member, why)
            if name in seen:
                raise _refuse(label, member, "appears twice (the second copy would replace the first)")
            if member.type in _KIND:
                raise _refuse(label, member, f"is {_KIND[member.type]}")
            if member.issym():
                target = member.linkname
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if target.startswith("/") or joined == ".." or joined.startswith("../"):
                    raise _refuse(label, member, f"symlink to {target!r} leaves the tree")
            elif member.islnk():
                if _clean_name(member.linkname) not in seen:  # None (escaping) is never seen
                    raise _refuse(label, member, f"hard link to {member.linkname!r} leaves the tree")
            elif not (member.isreg() or member.isdir()):
                raise _refuse(label, member, f"is a special file (tar type {member.type!r})")
            if member.isreg():
                total += member.size
                if total > limits.max_bytes:
                    raise UnsafeArchiveError(f"{label}: unpacks to more than {limits.max_bytes} bytes; refused")
            seen[name] = member
            members.append(member)
    except UnsafeArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UnsafeArchiveError(f"{label}: corrupt archive ({_why(exc)})") from None
    return members


def read_file(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bytes:
    """One regular member's bytes, in memory (never on disk)."""
    try:
        handle = tar.extractfile(member)
        return handle.read() if handle else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UnsafeArchiveError(f"{label}: cannot read {member.name!r} ({_why(exc)})") from None


def extract(path: pathlib.Path, dest: pathlib.Path, *, label: str | None = None,
            limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Extract a checked archive into `dest` (created; must be empty); the member names extracted."""
    label = label or str(path)
    dest = pathlib.Path(dest)
    with open_archive(path, label) as tar:
        members = scan(tar, label, limits)  # every header checked before the first byte is written
        created = not dest.exists()
        if not created and any(dest.iterdir()):
            raise UnsafeArchiveError(f"{dest}: destination is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            _remove_contents(dest, remove_self=created)
            raise UnsafeArchiveError(f"{label}: extraction refused ({_why(exc)}); nothing kept") from None
        except BaseException:
            _remove_contents(dest, remove_self=created)
            raise
    return [m.name for m in members]


def _remove_contents(dest: pathlib.Path, *, remove_self: bool) -> None:
    if remove_self:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


__all__ = ["DEFAULT_LIMITS", "Limits", "UnsafeArchiveError", "extract", "open_archive", "read_file", "scan"]
