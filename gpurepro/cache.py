"""The action cache: a compile's result stored under a key over everything that decides it.

A key (`compile_key`) is the sha256 of a canonical JSON document naming the toolchain (docker: the image
id; host: nvcc and host compiler versions plus `header_tree_hash` of the include tree), the bytes of every
file copied in, the sha256 of every patch applied (in order), nvcc's argv and the environment that reaches
nvcc. Nothing else goes in, so an unrelated edit (another step, a README) still hits.

On disk (`root`, default `$XDG_CACHE_HOME/gpurepro/actions`):

    entries/<key[:2]>/<key>/{meta.json, binary, compile.log}   one directory per key
    tmp/                                                         entries being written, trash being removed
    memo/                                                        header tree hashes (see header_tree_hash)
    lock                                                         flock'd around eviction, pruning, counters
    counters.json                                                hits and misses since the cache was made

An entry appears by renaming a complete, fsync'd directory from tmp/ into place, so a reader sees all of it
or nothing. A read checks meta.json and the sha256 and size of the binary and of compile.log: anything
corrupt, partial or unreadable is a miss and is removed (renamed into tmp/ first, then deleted), never a
wrong binary. The last-use time is the entry directory's mtime, set on every hit; eviction removes the
least recently used entries until the total is under `max_bytes`, never the entry just written.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .errors import InfraError

# Status vocabulary for result.json's "cache": {"status": ..., "key": ...}.
HIT, MISS, OFF = "hit", "miss", "off"
STATUSES = (HIT, MISS, OFF)

DEFAULT_MAX_BYTES = 10 * 1024**3
KEY_SCHEMA = "gpurepro-compile-key/1"  # bump when what goes into a key changes: old entries then miss
META_FORMAT = "gpurepro-action"
META_VERSION = 1
STALE_TMP_SECONDS = 3600  # a tmp/ item this old belongs to a writer that died

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_BINARY, _LOG, _META = "binary", "compile.log", "meta.json"


class CacheError(InfraError):
    """The cache directory could not be written (permissions, disk full). Callers may warn and go on."""

    def __init__(self, root, detail: str):
        super().__init__(f"action cache {root}: {detail}",
                         hint="check the directory's permissions and free space, or run with --no-cache")
        self.root = str(root)
        self.detail = detail


def default_cache_dir(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """GPUREPRO_CACHE_DIR, else $XDG_CACHE_HOME/gpurepro/actions, else ~/.cache/gpurepro/actions."""
    env = os.environ if env is None else env
    if env.get("GPUREPRO_CACHE_DIR"):
        return pathlib.Path(env["GPUREPRO_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    # the XDG spec says a relative value is invalid and must be ignored
    base = pathlib.Path(xdg) if xdg and os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
    return base / "gpurepro" / "actions"


def cache_record(status: str, key: str | None) -> dict:
    """The `"cache"` object of a result.json."""
    if status not in STATUSES:
        raise ValueError(f"cache status {status!r} is not one of {STATUSES}")
    return {"status": status, "key": key}


# --- keys --------------------------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_toolchain(image_id: str) -> dict:
    """Toolchain identity for the docker backend: the image id decides nvcc, headers and host compiler."""
    return {"backend": "docker", "image_id": image_id}


def host_toolchain(nvcc_version: str, host_compiler_version: str, header_tree: str) -> dict:
    """Toolchain identity for the host backend (`header_tree` from header_tree_hash)."""
    return {"backend": "host", "nvcc": nvcc_version, "host_compiler": host_compiler_version,
            "header_tree": header_tree}


def compile_key(*, toolchain: Mapping[str, str], files: Mapping[str, bytes], patches: Sequence[str],
                argv: Sequence[str], env: Mapping[str, str], workdir: str | None = None) -> str:
    """sha256 hex over exactly what decides nvcc's output.

    toolchain: docker_toolchain() or host_toolchain(). files: relative posix path -> bytes of every file
    copied in (the step, repros/common/**). patches: sha256 hex of each patch, in the order applied.
    argv: nvcc's full command line. env: the variables that reach nvcc. workdir: a per-run directory
    that appears in argv or env values (the host backend's fresh work directory); it is replaced by a
    placeholder so that reruns in another directory share the key.
    """
    def norm(text: str) -> str:
        return text.replace(workdir, "<workdir>") if workdir else text

    for path in files:
        if not isinstance(path, str) or path.startswith("/") or "\\" in path:
            raise ValueError(f"file path {path!r} must be relative and use '/'")
    for digest in patches:
        if not _KEY_RE.match(digest):
            raise ValueError(f"patch digest {digest!r} is not a sha256 hex string")
    document = {
        "schema": KEY_SCHEMA,
        "toolchain": {str(k): str(v) for k, v in toolchain.items()},
        # JSON arrays of [path, sha256] keep ("ab","c") and ("a","bc") apart; sorted so order is irrelevant
        "files": sorted([path, sha256_hex(bytes(data))] for path, data in files.items()),
        "patches": list(patches),
        "argv": [norm(str(a)) for a in argv],
        "env": sorted([str(k), norm(str(v))] for k, v in env.items()),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_hex(text.encode())


def gather_files(base: pathlib.Path, paths: Iterable[str | pathlib.Path]) -> dict[str, bytes]:
    """path relative to `base` -> bytes for each file named, directories taken recursively.

    For compile_key's `files`: e.g. gather_files(repros, ["step14_x.cu", "common"]).
    """
    base = pathlib.Path(base)
    out: dict[str, bytes] = {}
    for item in paths:
        path = base / item
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in found:
            out[file.relative_to(base).as_posix()] = file.read_bytes()
    return out


def _tree_signature(root: pathlib.Path) -> tuple[str, list[str]]:
    """A cheap fingerprint of a tree from stat alone, and its files in a fixed order.

    ctime is in it because a content edit that restores the mtime (touch -m, cp -p) still moves ctime.
    """
    digest = hashlib.sha256()
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/")
            st = os.lstat(full)
            digest.update(json.dumps([rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                      st.st_ino]).encode() + b"\n")
            files.append(rel)
    return digest.hexdigest(), files


def header_tree_hash(path: str | pathlib.Path, *, memo_dir: str | pathlib.Path | None = None) -> str:
    """sha256 over the relative paths and contents of every file under `path` (links by their target).

    Contents decide; the result is remembered in `memo_dir` (default: the action cache's memo/) against a
    stat fingerprint of the tree (paths, sizes, mtimes, ctimes, inodes), so an unchanged tree costs one
    stat walk instead of reading every header.
    """
    root = pathlib.Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"header tree {root} is not a directory")
    memo_dir = pathlib.Path(memo_dir) if memo_dir is not None else default_cache_dir() / "memo"
    signature, files = _tree_signature(root)
    memo = memo_dir / f"headers-{sha256_hex(str(root).encode())[:32]}.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("path") == str(root) and known.get("signature") == signature and \
                _KEY_RE.match(known.get("hash", "")):
            return known["hash"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = hashlib.sha256(b"gpurepro-header-tree/1\n")
    for rel in files:
        full = root / rel
        if full.is_symlink():
            record = ["link", rel, os.readlink(full)]
        else:
            record = ["file", rel, _file_sha256(full)]
        digest.update(json.dumps(record).encode() + b"\n")
    result = digest.hexdigest()
    with contextlib.suppress(OSError):  # a memo that cannot be written only costs time
        memo_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(memo, json.dumps({"path": str(root), "signature": signature, "hash": result}).encode(),
                      memo_dir)
    return result


def _file_sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --- peak RSS of a compile ---------------------------------------------------------------------------------
RSS_MARKER = "@@gpurepro-rss"
_RSS_RE = re.compile(re.escape(RSS_MARKER) + r" (\d+)\n?")

# Runs the command as a child, then prints the largest ru_maxrss among the processes it waited for
# (nvcc waits for cicc, ptxas, the host compiler; Linux reports the biggest single process of that tree) on
# stderr. The exit status is passed on, a signal as 128+N like a shell does.
_RSS_SCRIPT = (
    "import resource,signal,subprocess,sys\n"
    "try:\n"
    " p=subprocess.Popen(sys.argv[1:])\n"
    "except OSError as e:\n"
    " sys.stderr.write(sys.argv[1]+': '+e.strerror+'\\n');sys.exit(127)\n"
    # a stop request for the wrapper goes to the compiler; Ctrl-C reaches both, so only wait on
    "signal.signal(signal.SIGTERM,lambda n,f:p.send_signal(n))\n"
    "while True:\n"
    " try:\n"
    "  r=p.wait();break\n"
    " except KeyboardInterrupt:\n"
    "  pass\n"
    "m=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stderr.write('\\n" + RSS_MARKER + " %d\\n'%(m*1024))\n"
    "sys.exit(128-r if r<0 else r)\n"
)


def peak_rss_wrapper(argv: Sequence[str], *, python: str = "python3") -> list[str]:
    """argv run under a python3 wrapper that reports its peak RSS on stderr (see parse_peak_rss).

    Works wherever python3 is on PATH: the toolchain image (its venv), a host. Exit status preserved.
    """
    if not argv:
        raise ValueError("empty command")
    return [python, "-c", _RSS_SCRIPT, *[str(a) for a in argv]]


def parse_peak_rss(output: str) -> tuple[str, int | None]:
    """(output without the marker line, peak RSS in bytes or None when the marker is absent)."""
    matches = list(_RSS_RE.finditer(output))
    if not matches:
        return output, None
    last = matches[-1]
    cleaned = output[:last.start()] + output[last.end():]
    # the wrapper starts its marker on a fresh line; drop the newline it added if the output already had one
    if cleaned.endswith("\n\n") or cleaned == "\n":
        cleaned = cleaned[:-1]
    return cleaned, int(last.group(1))


# --- entries -----------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """A cached compile. `binary` is None for a compile that produced none (compile_error)."""

    binary: bytes | None
    compile_log: str
    outcome: str
    reason: str
    events: list = field(default_factory=list)
    compile_seconds: float = 0.0
    peak_rss_bytes: int | None = None
    created: float = field(default_factory=time.time)
    extra: dict = field(default_factory=dict)  # caller's JSON-able facts (binary name, argv) for humans
    key: str | None = None  # set by get()


@dataclass
class CacheStats:
    root: str
    entries: int
    bytes: int
    max_bytes: int
    oldest: float | None  # last-use time (epoch seconds) of the least recently used entry
    newest: float | None
    hits: int
    misses: int
    corrupt: int  # entries found corrupt on read and removed
    evicted: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write(path: pathlib.Path, data: bytes, tmp_dir: pathlib.Path, *, sync: bool = True) -> None:
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        if sync:
            _write_synced(tmp, data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class ActionCache:
    """Compile results by key under `root`, capped at `max_bytes` with least-recently-used eviction."""

    def __init__(self, root: str | pathlib.Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = pathlib.Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.memo_dir = self.root / "memo"

    # -- paths and locking
    def entry_path(self, key: str) -> pathlib.Path:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"cache key {key!r} is not a sha256 hex string")
        return self.entries_dir / key[:2] / key

    def _ensure(self) -> None:
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(self.root, f"cannot create the directory: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def _locked(self):
        self._ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def header_tree_hash(self, path: str | pathlib.Path) -> str:
        return header_tree_hash(path, memo_dir=self.memo_dir)

    # -- read
    def get(self, key: str) -> Entry | None:
        """The entry for `key`, checked end to end, or None. A bad entry is removed and counts as a miss."""
        path = self.entry_path(key)
        try:
            inode = os.stat(path).st_ino
        except OSError:
            self._count(misses=1)
            return None
        entry = self._read(path, key)
        if entry is None:
            self._discard(path, inode)
            self._count(misses=1, corrupt=1)
            return None
        now = time.time_ns()
        with contextlib.suppress(OSError):  # an entry evicted right now is still a good hit
            os.utime(path, ns=(now, now))
        self._count(hits=1)
        return entry

    def _read(self, path: pathlib.Path, key: str) -> Entry | None:
        try:
            meta = json.loads((path / _META).read_text())
            if meta.get("format") != META_FORMAT or meta.get("version") != META_VERSION or meta.get("key") != key:
                return None
            log_bytes = (path / _LOG).read_bytes()
            if not _matches(log_bytes, meta["compile_log"]):
                return None
            binary = None
            if meta["binary"] is not None:
                binary = (path / _BINARY).read_bytes()
                if not _matches(binary, meta["binary"]):
                    return None
            elif (path / _BINARY).exists():
                return None
            rss = meta["peak_rss_bytes"]
            return Entry(binary=binary, compile_log=log_bytes.decode("utf-8"), outcome=str(meta["outcome"]),
                         reason=str(meta["reason"]), events=list(meta["events"]),
                         compile_seconds=float(meta["compile_seconds"]),
                         peak_rss_bytes=None if rss is None else int(rss), created=float(meta["created"]),
                         extra=dict(meta.get("extra") or {}), key=key)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    # -- write
    def put(self, key: str, entry: Entry, *, replace: bool = False) -> bool:
        """Store `entry` atomically, then evict down to max_bytes (never this key).

        Returns True when this entry is now stored, False when a valid entry for the key was already
        there (another run filled it first) and was kept. replace=True (a --no-cache run) puts this one in
        its place instead. Raises CacheError when the cache cannot be written.
        """
        final = self.entry_path(key)
        self._ensure()
        staged = self.tmp_dir / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        stored = False
        try:
            self._stage(staged, key, entry)
            final.parent.mkdir(exist_ok=True)
            for _ in range(5):
                try:
                    os.rename(staged, final)
                    stored = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                try:
                    inode = os.stat(final).st_ino
                except FileNotFoundError:
                    continue  # removed between our rename and the stat: try again
                if not replace and self._read(final, key) is not None:
                    break  # someone else's equivalent entry: keep it
                self._discard(final, inode)
            if stored:
                _fsync_dir(final.parent)
                now = time.time_ns()
                os.utime(final, ns=(now, now))
        except OSError as exc:
            raise CacheError(self.root, f"cannot store entry {key[:12]}: {exc.strerror or exc}") from None
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        self.evict(keep=key)
        return stored

    def _stage(self, staged: pathlib.Path, key: str, entry: Entry) -> None:
        staged.mkdir()
        log_bytes = entry.compile_log.encode("utf-8")
        meta = {
            "format": META_FORMAT, "version": META_VERSION, "key": key,
            "outcome": entry.outcome, "reason": entry.reason, "events": list(entry.events),
            "compile_seconds": float(entry.compile_seconds),
            "peak_rss_bytes": None if entry.peak_rss_bytes is None else int(entry.peak_rss_bytes),
            "created": float(entry.created), "extra": dict(entry.extra),
            "binary": None if entry.binary is None else {"sha256": sha256_hex(entry.binary),
                                                          "size": len(entry.binary)},
            "compile_log": {"sha256": sha256_hex(log_bytes), "size": len(log_bytes)},
        }
        if entry.binary is not None:
            _write_synced(staged / _BINARY, entry.binary)
            os.chmod(staged / _BINARY, 0o755)
        _write_synced(staged / _LOG, log_bytes)
        # meta last: its presence and sha256 fields vouch for the others
        _write_synced(staged / _META, json.dumps(meta, indent=1, sort_keys=True).encode())
        _fsync_dir(staged)

    def _discard(self, path: pathlib.Path, inode: int | None = None) -> bool:
        """Remove an entry directory: renamed into tmp/ at once (readers then miss), deleted after.

        With `inode`, only if the directory is still the one that was judged (not a fresh replacement).
        """
        try:
            if inode is not None and os.stat(path).st_ino != inode:
                return False
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            trash = self.tmp_dir / f"trash-{path.name[:16]}.{os.getpid()}.{secrets.token_hex(4)}"
            os.rename(path, trash)
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- size, eviction, pruning
    def _scan(self) -> list[tuple[float, int, str, pathlib.Path]]:
        """(last use ns, bytes, key, path) of every entry."""
        found = []
        try:
            shards = list(os.scandir(self.entries_dir))
        except OSError:
            return found
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                items = list(os.scandir(shard.path))
            except OSError:
                continue
            for item in items:
                if not _KEY_RE.match(item.name):
                    continue
                try:
                    used = item.stat(follow_symlinks=False).st_mtime_ns
                    size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(item.path))
                except OSError:
                    continue
                found.append((used, size, item.name, pathlib.Path(item.path)))
        found.sort()
        return found

    def evict(self, *, keep: str | None = None, max_bytes: int | None = None) -> tuple[int, int]:
        """Remove least recently used entries until the total is <= max_bytes; returns (count, bytes)."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        with self._locked():
            removed = self._evict_locked(limit, keep)
            self._clean_tmp()
            if removed[0]:
                self._count_locked(evicted=removed[0])
        return removed

    def _evict_locked(self, limit: int, keep: str | None) -> tuple[int, int]:
        entries = self._scan()
        total = sum(size for _, size, _, _ in entries)
        count = freed = 0
        for _, size, key, path in entries:
            if total <= limit:
                break
            if key == keep:
                continue
            if self._discard(path):
                total -= size
                count += 1
                freed += size
        return count, freed

    def _clean_tmp(self, older_than: float = STALE_TMP_SECONDS) -> None:
        cutoff = time.time() - older_than
        with contextlib.suppress(OSError):
            for item in os.scandir(self.tmp_dir):
                with contextlib.suppress(OSError):
                    if item.stat(follow_symlinks=False).st_mtime < cutoff:
                        if item.is_dir(follow_symlinks=False):
                            shutil.rmtree(item.path, ignore_errors=True)
                        else:
                            os.unlink(item.path)

    def prune(self, max_bytes: int | None = None, older_than_days: float | None = None,
              all: bool = False) -> dict:
        """Remove entries: all of them, those unused for `older_than_days`, and/or LRU ones beyond
        `max_bytes` (default: this cache's cap). Returns {"removed", "bytes", "entries", "bytes_left"}."""
        count = freed = 0
        with self._locked():
            if all:
                for _, size, _, path in self._scan():
                    if self._discard(path):
                        count, freed = count + 1, freed + size
                self._clean_tmp(older_than=STALE_TMP_SECONDS)
            else:
                if older_than_days is not None:
                    cutoff = time.time_ns() - int(older_than_days * 86400 * 1e9)
                    for used, size, _, path in self._scan():
                        if used < cutoff and self._discard(path):
                            count, freed = count + 1, freed + size
                more = self._evict_locked(self.max_bytes if max_bytes is None else max_bytes, None)
                count, freed = count + more[0], freed + more[1]
                self._clean_tmp()
            if count:
                self._count_locked(evicted=count)
            left = self._scan()
        return {"removed": count, "bytes": freed, "entries": len(left),
                "bytes_left": sum(size for _, size, _, _ in left)}

    def stats(self) -> CacheStats:
        entries = self._scan()
        counters = self._counters()
        return CacheStats(
            root=str(self.root), entries=len(entries), bytes=sum(size for _, size, _, _ in entries),
            max_bytes=self.max_bytes,
            oldest=entries[0][0] / 1e9 if entries else None, newest=entries[-1][0] / 1e9 if entries else None,
            hits=counters.get("hits", 0), misses=counters.get("misses", 0),
            corrupt=counters.get("corrupt", 0), evicted=counters.get("evicted", 0))

    # -- counters (kept across processes: `invoke cache.stats` reports them)
    def _counters(self) -> dict:
        try:
            data = json.loads((self.root / "counters.json").read_text())
            return {k: int(v) for k, v in data.items() if isinstance(v, int)}
        except (OSError, ValueError, AttributeError):
            return {}

    def _count(self, **increments: int) -> None:
        # a counter that cannot be written must not turn a hit into an error
        with contextlib.suppress(OSError, CacheError):
            with self._locked():
                self._count_locked(**increments)

    def _count_locked(self, **increments: int) -> None:
        counters = self._counters()
        for name, value in increments.items():
            counters[name] = counters.get(name, 0) + value
        with contextlib.suppress(OSError):
            _atomic_write(self.root / "counters.json", json.dumps(counters).encode(), self.tmp_dir,
                          sync=False)  # counters are advisory: no fsync on every lookup


def _matches(data: bytes, expected: Mapping) -> bool:
    return len(data) == int(expected["size"]) and sha256_hex(data) == expected["sha256"]


# --- what `invoke cache.stats` / `invoke cache.prune` show --------------------------------------------------
def _size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _time_text(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def cache_stats(root: str | pathlib.Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[str, str]]:
    """(field, value) rows describing the cache at `root` (default: default_cache_dir())."""
    s = ActionCache(root, max_bytes).stats()
    lookups = s.hits + s.misses
    rate = f" ({100 * s.hits / lookups:.0f}% hits)" if lookups else ""
    return [
        ("directory", s.root),
        ("entries", str(s.entries)),
        ("size", f"{_size_text(s.bytes)} of {_size_text(s.max_bytes)} ({s.bytes} bytes)"),
        ("least recently used", _time_text(s.oldest)),
        ("most recently used", _time_text(s.newest)),
        ("lookups", f"{s.hits} hits, {s.misses} misses{rate}"),
        ("corrupt entries removed", str(s.corrupt)),
        ("entries evicted or pruned", str(s.evicted)),
    ]


def cache_prune(root: str | pathlib.Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES, *,
                to_bytes: int | None = None, older_than_days: float | None = None, all: bool = False) -> dict:
    """Prune the cache at `root` (see ActionCache.prune); `to_bytes` defaults to the cap `max_bytes`."""
    return ActionCache(root, max_bytes).prune(max_bytes=to_bytes, older_than_days=older_than_days, all=all)


# --- what each step cost last time ------------------------------------------------------------------------
class StepHistory:
    """The last measured compile time and peak RSS per step and arch (`<root>/history.json`).

    What the progress display shows as "expected", and what the compile scheduler reserves in memory, before
    the cache has an entry for the exact key (an edited step has a new key but costs about the same).
    """

    NAME = "history.json"

    def __init__(self, root: str | pathlib.Path | None = None):
        self.root = pathlib.Path(root) if root is not None else default_cache_dir()
        self.path = self.root / self.NAME
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, step: str, arch: str) -> dict:
        """{"seconds": float, "peak_rss_bytes": int | None} or {} where nothing was measured."""
        value = self._read().get(f"{step}@{arch}")
        return value if isinstance(value, dict) else {}

    def record(self, step: str, arch: str, seconds: float, peak_rss_bytes: int | None) -> None:
        """Best effort: a history that cannot be written costs a less accurate estimate, nothing else."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._lock, open(self.root / "lock", "a+") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                data = self._read()
                data[f"{step}@{arch}"] = {"seconds": round(seconds, 3), "peak_rss_bytes": peak_rss_bytes}
                tmp = self.path.with_name(f".{self.NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
        except OSError:
            pass
