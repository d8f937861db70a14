"""Opening archives that came from someone else: check every member before anything touches the disk.

Three layers. `open_archive` reads the file front to back through the decompressor, refusing any single
read larger than tar metadata ever needs (tarfile inflates a pax header or GNU long name whole, so a 1 GiB
header a few MB compressed would otherwise sit in memory). `MemberCheck` (used by `scan`, and member by
member by readers that stream) refuses, with one line naming the member: more members or more unpacked
bytes than the limits, absolute paths, `..`, duplicate names, links whose target leaves the tree, devices,
FIFOs and any other special file; it stops early, so a compression bomb is not inflated in full. `extract`
then writes with Python's own `filter="data"` as a second guard, into a destination that must be empty,
and removes what it wrote if anything fails.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import pathlib
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass

from .errors import BadInputError, UsageError
from .text import terminal_safe


class UnsafeArchiveError(BadInputError):
    """An archive is corrupt, foreign or hostile: one line, exit 2."""


@dataclass(frozen=True)
class Limits:
    max_members: int = 50_000
    max_bytes: int = 8 << 30  # unpacked; a run directory with a few dozen binaries is far below this


DEFAULT_LIMITS = Limits()
# what a damaged, truncated or foreign file raises while it is decompressed and parsed
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_KIND = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
         tarfile.CONTTYPE: "a contiguous file"}
MAX_READ = 4 << 20  # tar metadata (pax headers, long names) is kilobytes; member data is read in smaller chunks
_MAGIC = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")), (b"BZh", bz2.BZ2File),
          (b"\xfd7zXZ\x00", lzma.LZMAFile))


class _Stream:
    """The decompressed archive as tarfile reads it; no single read may exceed MAX_READ."""

    def __init__(self, raw, decompressed, label: str):
        self._raw, self._stream, self.name = raw, decompressed, label

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ:
            raise UnsafeArchiveError(f"{self.name}: a tar header asks to read {size} bytes at once (metadata "
                                     f"larger than {MAX_READ} bytes); refused")
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)  # forward only while reading in order: no re-inflation

    def tell(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        try:
            if self._stream is not self._raw:
                self._stream.close()
        finally:
            self._raw.close()


class _OwningTarFile(tarfile.TarFile):
    """A TarFile that closes the stream it reads (tarfile leaves a passed-in file object open)."""

    owned: _Stream | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.owned is not None:
                self.owned.close()
                self.owned = None


def open_archive(path: pathlib.Path, label: str | None = None) -> tarfile.TarFile:
    """`path` (gzip, bzip2, xz or plain tar) as a TarFile; read its members in order for one pass."""
    label = label or terminal_safe(path)
    raw = stream = None
    try:
        raw = open(path, "rb")
        magic = raw.read(6)
        raw.seek(0)
        opener = next((cls for prefix, cls in _MAGIC if magic.startswith(prefix)), None)
        stream = _Stream(raw, opener(raw) if opener else raw, label)
        tar = _OwningTarFile.open(fileobj=stream, mode="r:")
        tar.owned = stream
        return tar
    except FileNotFoundError:
        raise UnsafeArchiveError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UnsafeArchiveError(f"{label}: is a directory, not a bundle") from None
    except PermissionError:
        raise UnsafeArchiveError(f"{label}: cannot be read (permission denied)") from None
    except UnsafeArchiveError:
        _close(stream, raw)
        raise
    except READ_ERRORS as exc:
        _close(stream, raw)
        raise UnsafeArchiveError(f"{label}: not a readable tar archive ({why(exc)})") from None


def _close(stream, raw) -> None:
    if stream is not None:
        stream.close()
    elif raw is not None:
        raw.close()


def why(exc: BaseException) -> str:
    """The first line of a read error, marked `truncated` when the file ends early."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, EOFError) or "unexpected end" in text.lower() or "truncated" in text.lower():
        return f"truncated: {text}"
    return text


_why = why  # the old private name


def _clean_name(name: str) -> str | None:
    """The member name as a relative POSIX path, or None if it is absolute, escapes, or is empty."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _refuse(label: str, member: tarfile.TarInfo, why_: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refused member {member.name!r}: {why_}; nothing was extracted")


class MemberCheck:
    """The checks of one archive's headers, fed member by member in archive order."""

    def __init__(self, label: str, limits: Limits = DEFAULT_LIMITS):
        self.label, self.limits = label, limits
        self.seen: set[str] = set()
        self.count = 0
        self.total = 0

    def __call__(self, member: tarfile.TarInfo) -> str:
        """The member's clean relative name; UnsafeArchiveError if it is not allowed."""
        label, limits = self.label, self.limits
        if self.count >= limits.max_members:
            raise UnsafeArchiveError(f"{label}: more than {limits.max_members} members; refused")
        name = _clean_name(member.name)
        if name is None:
            reason = "absolute path" if member.name.startswith(("/", "\\")) or member.name[1:2] == ":" else \
                "path leaves the destination ('..')" if ".." in member.name.split("/") else "empty path"
            raise _refuse(label, member, reason)
        if name in self.seen:
            raise _refuse(label, member, "appears twice (the second copy would replace the first)")
        if member.type in _KIND:
            raise _refuse(label, member, f"is {_KIND[member.type]}")
        if member.issym():
            target = member.linkname
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if target.startswith("/") or joined == ".." or joined.startswith("../"):
                raise _refuse(label, member, f"symlink to {target!r} leaves the tree")
        elif member.islnk():
            if _clean_name(member.linkname) not in self.seen:  # None (escaping) is never seen
                raise _refuse(label, member, f"hard link to {member.linkname!r} leaves the tree")
        elif not (member.isreg() or member.isdir()):
            raise _refuse(label, member, f"is a special file (tar type {member.type!r})")
        if member.isreg():
            self.total += member.size
            if self.total > limits.max_bytes:
                raise UnsafeArchiveError(f"{label}: unpacks to more than {limits.max_bytes} bytes; refused")
        self.seen.add(name)
        self.count += 1
        return name


def scan(tar: tarfile.TarFile, label: str, limits: Limits = DEFAULT_LIMITS) -> list[tarfile.TarInfo]:
    """Every member, checked; UnsafeArchiveError on the first one that is not allowed."""
    check = MemberCheck(label, limits)
    members: list[tarfile.TarInfo] = []
    try:
        for member in tar:
            check(member)
            members.append(member)
    except UnsafeArchiveError:
        raise
    except READ_ERRORS as exc:
        raise UnsafeArchiveError(f"{label}: corrupt archive ({why(exc)})") from None
    return members


def read_file(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str) -> bytes:
    """One regular member's bytes, in memory (never on disk)."""
    try:
        handle = tar.extractfile(member)
        return handle.read() if handle else b""
    except READ_ERRORS as exc:
        raise UnsafeArchiveError(f"{label}: cannot read {member.name!r} ({why(exc)})") from None


def extract(path: pathlib.Path, dest: pathlib.Path, *, label: str | None = None,
            limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Extract a checked archive into `dest` (created; must be an empty directory); the member names extracted."""
    label = label or terminal_safe(path)
    dest = pathlib.Path(dest)
    if dest.exists() and not dest.is_dir():  # before any work: a usage mistake, not a hostile archive
        raise UsageError(f"{terminal_safe(dest)}: is a file, not a directory",
                         hint="give --dest an empty or new directory")
    with open_archive(path, label) as tar:
        members = scan(tar, label, limits)  # every header checked before the first byte is written
        created = not dest.exists()
        if not created and any(dest.iterdir()):
            raise UnsafeArchiveError(f"{terminal_safe(dest)}: destination is not empty",
                                     hint="give --dest an empty or new directory")
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnsafeArchiveError(f"{terminal_safe(dest)}: cannot create the destination ({exc.strerror})") from None
        try:
            tar.extractall(dest, members=members, filter="data")
        except READ_ERRORS as exc:
            _remove_contents(dest, remove_self=created)
            raise UnsafeArchiveError(f"{label}: extraction refused ({why(exc)}); nothing kept") from None
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


__all__ = ["DEFAULT_LIMITS", "Limits", "MAX_READ", "MemberCheck", "READ_ERRORS", "UnsafeArchiveError", "extract",
           "open_archive", "read_file", "scan", "why"]
