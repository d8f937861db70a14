"""Bundles: one run directory as a file a stranger can check, read and run again.

`<run-id>.tar.gz` holds `<run-id>/MANIFEST.json` (format, format version, tool version, every other file
with size and sha256), `<run-id>/README.md` (the exact commands to reproduce) and `<run-id>/run/` (the
run directory as it is on disk, run.json with its environment variables redacted). Deterministic: entries
sorted, owners root:root, mtimes 0, gzip header without a name or time, so the same run directory gives
the same bytes. Written whole or not at all (temp file + rename), mode 0644.

Every bundle is opened through safe_tar. `verify` and `inspect` read it in one pass: each member's header
is checked before its data is read, files are hashed as they stream past, and only the small members that
are parsed (MANIFEST.json, run.json, result.json, README.md) are kept, each under a size limit checked in
its header. So memory stays bounded whatever the bundle holds. Recorded text shown to a terminal goes
through text.terminal_safe.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import pathlib
import secrets
import shlex
import stat
import time
from dataclasses import dataclass, field

from . import __version__
from .archive import build_tar
from .errors import BadInputError, InfraError
from .redaction import NOT_RECORDED, REDACTED, redact_record
from .run import lock as runlock
from .render.escape import md_cell
from .run.directory import RUN_JSON
from .run.record import RunRecord
from .safe_tar import DEFAULT_LIMITS, READ_ERRORS, Limits, MemberCheck, UnsafeArchiveError, open_archive, why
from .text import terminal_safe

FORMAT = "gpurepro-bundle"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
README = "README.md"
RUN_DIR = "run"
SUFFIX = ".tar.gz"
_HASH_CHUNK = 1 << 20


class BundleError(BadInputError):
    """A bundle fails verification (altered, incomplete, foreign, unsupported): one line, exit 2."""


# --- which run -------------------------------------------------------------------------------------
def resolve_run(reports_dir: pathlib.Path, run: str | None) -> pathlib.Path:
    """RUN as given: a run directory path, a run id under reports/, or (None) reports/latest."""
    reports_dir = pathlib.Path(reports_dir)
    if run is None or run == "latest":
        candidate = reports_dir / "latest"
        if not candidate.exists():
            raise BadInputError(f"no runs under {reports_dir} (reports/latest is missing)",
                                hint="run `invoke repro STEP` first, or name a run directory")
    else:
        candidate = pathlib.Path(run)
        if not candidate.is_dir():
            candidate = reports_dir / run
    path = candidate.resolve()
    if not path.exists():
        raise BadInputError(f"no run {run!r}: neither a directory nor a run under {reports_dir}")
    if not (path / RUN_JSON).is_file():
        raise BadInputError(f"{run or candidate}: not a run directory (no {RUN_JSON})")
    return path


# --- create ----------------------------------------------------------------------------------------
@dataclass
class Created:
    path: pathlib.Path
    run_id: str
    files: int
    unpacked_bytes: int
    bundle_bytes: int
    seconds: float


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_files(run_path: pathlib.Path) -> tuple[dict[str, bytes], frozenset[str]]:
    """The run directory's regular files (relative path -> bytes) and which are executable.

    Left out: the lock of a run in progress and atomic-write temp files (never part of a finished run);
    symlinks (a run directory has none; one would point outside the bundle).
    """
    files: dict[str, bytes] = {}
    executable = set()
    for path in sorted(run_path.rglob("*")):
        rel = path.relative_to(run_path).as_posix()
        if path.is_symlink() or not path.is_file():
            continue
        if path.name == runlock.LOCK_NAME or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        files[rel] = path.read_bytes()
        if path.stat().st_mode & stat.S_IXUSR:
            executable.add(rel)
    record = json.loads(files[RUN_JSON])
    redacted = redact_record(record)
    if redacted != record:  # a run recorded before redaction existed: the bundle carries the redacted copy
        files[RUN_JSON] = (json.dumps(redacted, indent=2, default=str) + "\n").encode()
    return files, frozenset(executable)


def build(run_path: pathlib.Path) -> tuple[str, bytes, int, int]:
    """(run id, the bundle's bytes, file count, unpacked bytes) for a run directory."""
    run_path = pathlib.Path(run_path)
    lock = runlock.holder(run_path)
    if lock is not None:
        raise BadInputError(f"run {run_path.name} is still in progress ({runlock.describe(lock)})",
                            hint="bundle it when it has finished")
    files, executable = run_files(run_path)
    record = _record_of(json.loads(files[RUN_JSON]), run_path.name)
    run_id = record.run_id
    top = run_id
    payload = {f"{RUN_DIR}/{rel}": data for rel, data in files.items()}
    payload[README] = render_readme(record, f"{run_id}{SUFFIX}").encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "gpurepro", "version": __version__},
        "run_id": run_id,
        "run_status": record.status,
        "files": [{"path": name, "size": len(data), "sha256": _sha256(data)} for name, data in sorted(payload.items())],
    }
    payload[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    tar = build_tar({f"{top}/{name}": data for name, data in payload.items()},
                    executable=frozenset(f"{top}/{RUN_DIR}/{rel}" for rel in executable))
    # gzip.compress writes no file name; mtime=0 fixes the only other varying header field
    return run_id, gzip.compress(tar, compresslevel=6, mtime=0), len(payload), sum(map(len, payload.values()))


def create(run_path: pathlib.Path, output: pathlib.Path | None = None) -> Created:
    started = time.monotonic()
    run_id, data, count, unpacked = build(run_path)
    out = pathlib.Path(output) if output else pathlib.Path.cwd() / f"{run_id}{SUFFIX}"
    if out.is_dir():
        out = out / f"{run_id}{SUFFIX}"
    write_bundle(out, data)
    return Created(out, run_id, count, unpacked, len(data), time.monotonic() - started)


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def write_bundle(out: pathlib.Path, data: bytes) -> None:
    """Write `data` to `out` whole or not at all: a temp file beside it, flushed to disk, then renamed.

    Created with the usual mode (0666 less the umask: 0644 normally): a bundle is made to be shared, and the
    run directory's redaction, not the file mode, keeps secrets out of it. A full disk is infrastructure
    (exit 3); an output path that cannot be written is bad input (exit 2). Nothing partial is left.
    """
    out = pathlib.Path(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
    shown = terminal_safe(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # delayed allocation can report a full disk only here
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except OSError as exc:
        _discard(tmp)
        reason = exc.strerror or str(exc)
        if exc.errno in _DISK_ERRORS:
            free = _free_bytes(out.parent)
            raise InfraError(f"cannot write bundle {shown}: {reason}"
                             + (f" ({free} bytes free, the bundle needs {len(data)})" if free is not None else ""),
                             hint="free some space or write it elsewhere with --output") from None
        raise BadInputError(f"cannot write bundle {shown}: {reason}",
                            hint="choose a writable --output path") from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: pathlib.Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # its folder is not there or not a folder: nothing was written
        pass


def _free_bytes(directory: pathlib.Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


# --- reading and verifying -------------------------------------------------------------------------
# Members parsed as JSON (MANIFEST.json, run/run.json, run/steps/*/result.json) and README.md are held in
# memory: each is refused above MAX_TEXT_BYTES (checked in its tar header, before it is read), all together
# above MAX_TEXTS_BYTES; JSON with more than MAX_JSON_CONTAINERS objects/arrays is refused before parsing
# (json.loads of small nested containers takes ~20x the text's size). A real run's are kilobytes.
MAX_TEXT_BYTES = 8 << 20
MAX_TEXTS_BYTES = 32 << 20
MAX_JSON_CONTAINERS = 200_000


def parse_json(data: bytes, what: str, *, limit: int = MAX_TEXT_BYTES):
    """A bundle member's JSON, bounded in memory; BundleError naming it when it is too big or too nested."""
    if len(data) > limit:
        raise BundleError(f"{what} is {len(data)} bytes; gpurepro reads at most {limit} bytes of JSON from a bundle")
    if data.count(b"{") + data.count(b"[") > MAX_JSON_CONTAINERS:
        raise BundleError(f"{what} holds more than {MAX_JSON_CONTAINERS} JSON objects and arrays; refused")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{what} is not valid JSON ({terminal_safe(str(exc).splitlines()[0])})") from None


@dataclass
class Contents:
    """What a bundle holds, read in memory: never extracted, nothing executed."""

    path: pathlib.Path
    top: str
    manifest: dict
    digests: dict[str, tuple[int, str]]          # path under top -> (size, sha256) as found
    texts: dict[str, bytes] = field(default_factory=dict)  # MANIFEST, README, run.json, result.json files
    problem: str | None = None                     # the first verification failure, None when intact
    bundle_bytes: int = 0

    @property
    def record(self) -> RunRecord:
        """The bundled run.json, typed; a missing or damaged one reads as an empty record named after the bundle."""
        try:
            data = parse_json(self.texts[f"{RUN_DIR}/{RUN_JSON}"], RUN_JSON)
        except (KeyError, BundleError):
            data = None
        return _record_of(data, self.top)

    def step_results(self) -> dict[str, dict]:
        results = {}
        for name, data in self.texts.items():
            if name.startswith(f"{RUN_DIR}/steps/") and name.endswith("/result.json"):
                try:
                    result = parse_json(data, name)
                except BundleError:
                    continue
                if isinstance(result, dict):
                    results[name.split("/")[2]] = result
        return results


def _wanted_text(name: str) -> bool:
    return name in (MANIFEST, README, f"{RUN_DIR}/{RUN_JSON}") or (
        name.startswith(f"{RUN_DIR}/steps/") and name.endswith("/result.json") and name.count("/") == 3)


def read(path: pathlib.Path, *, limits: Limits = DEFAULT_LIMITS) -> Contents:
    """Check and hash every member in one pass over the stream; the verification result is in `.problem`.

    Memory stays bounded whatever the members' sizes: files are hashed in chunks as they stream past and
    only the small text members are kept (size-checked from their tar headers before a byte is read).
    Raises UnsafeArchiveError/BundleError only when the file cannot be read as a bundle at all.
    """
    path = pathlib.Path(path)
    label = terminal_safe(path.name)
    check = MemberCheck(label, limits)
    tops: list[str] = []
    digests: dict[str, tuple[int, str]] = {}
    texts: dict[str, bytes] = {}
    kept_bytes = 0
    others = []
    rel = ""
    with open_archive(path, label) as tar:
        try:
            for member in tar:
                name = check(member)
                top, _, rel = name.partition("/")
                if top not in tops:
                    tops.append(top)
                if len(tops) > 1:
                    raise BundleError(f"{label}: not a gpurepro bundle (expected one top directory <run-id>/, "
                                      f"found {terminal_safe(tops[0])!r} and {terminal_safe(tops[1])!r})")
                if member.isdir() or not rel:
                    continue
                if not member.isreg():
                    others.append(rel)
                    continue
                keep = _wanted_text(rel)
                if keep:
                    if member.size > MAX_TEXT_BYTES:  # from the header: refused before it is read
                        raise BundleError(f"{label}: {terminal_safe(rel)} is {member.size} bytes; gpurepro reads at "
                                          f"most {MAX_TEXT_BYTES} bytes of it (refused before reading)")
                    kept_bytes += member.size
                    if kept_bytes > MAX_TEXTS_BYTES:
                        raise BundleError(f"{label}: its JSON and README members exceed {MAX_TEXTS_BYTES} bytes "
                                          f"together (at {terminal_safe(rel)}); refused")
                digests[rel], data = _hash_member(tar, member, keep)
                if keep:
                    texts[rel] = data
        except (UnsafeArchiveError, BundleError):
            raise
        except READ_ERRORS as exc:
            where = f" at {terminal_safe(rel)!r}" if rel else ""
            raise UnsafeArchiveError(f"{label}: truncated or corrupt{where} ({why(exc)})") from None
    if len(tops) != 1:
        raise BundleError(f"{label}: not a gpurepro bundle (expected one top directory <run-id>/, found none)")
    top = tops[0]
    if MANIFEST not in texts:
        raise BundleError(f"{label}: not a gpurepro bundle (no {terminal_safe(top)}/{MANIFEST})")
    manifest = parse_json(texts[MANIFEST], f"{label}: {MANIFEST}")
    contents = Contents(path, top, manifest if isinstance(manifest, dict) else {}, digests, texts,
                        bundle_bytes=path.stat().st_size)
    problem = _check(contents, others, manifest)
    contents.problem = terminal_safe(problem) if problem else None  # names in it came from the bundle
    return contents


def _hash_member(tar, member, keep: bool) -> tuple[tuple[int, str], bytes]:
    """((size, sha256), the bytes when kept) of the member the stream is at, read in chunks."""
    handle = tar.extractfile(member)
    digest = hashlib.sha256()
    size = 0
    kept = []
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if keep:
            kept.append(chunk)
    return (size, digest.hexdigest()), b"".join(kept)


def _check(contents: Contents, others: list[str], manifest) -> str | None:
    label = terminal_safe(contents.path.name)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"{label}: not a gpurepro bundle ({MANIFEST} has no format {FORMAT!r})"
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        return f"{label}: unsupported bundle format version {version!r} (this gpurepro {__version__} reads {FORMAT_VERSION})"
    if manifest.get("run_id") != contents.top:
        return f"{label}: {MANIFEST} names run {manifest.get('run_id')!r} but the bundle holds {contents.top!r}"
    entries = manifest.get("files")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("size"), int)
            and isinstance(e.get("sha256"), str) for e in entries):
        return f"{label}: {MANIFEST} 'files' must list {{path, size, sha256}} entries"
    listed = {e["path"]: e for e in entries}
    for name, entry in listed.items():
        found = contents.digests.get(name)
        if found is None:
            return f"{label}: {name} is listed in {MANIFEST} but missing from the bundle"
        size, sha = found
        if size != entry["size"]:
            return f"{label}: {name} is {size} bytes, {MANIFEST} says {entry['size']} (altered or truncated)"
        if sha != entry["sha256"]:
            return f"{label}: {name} does not match its sha256 in {MANIFEST} (altered)"
    for name in sorted(contents.digests):
        if name != MANIFEST and name not in listed:
            return f"{label}: {name} is in the bundle but not in {MANIFEST} (added after the bundle was made)"
    if others:
        return f"{label}: {others[0]} is a link; bundles hold only files listed in {MANIFEST}"
    if f"{RUN_DIR}/{RUN_JSON}" not in listed:
        return f"{label}: no {RUN_DIR}/{RUN_JSON} in the bundle"
    return None


def verify(path: pathlib.Path, *, limits: Limits = DEFAULT_LIMITS) -> Contents:
    contents = read(path, limits=limits)
    if contents.problem:
        raise BundleError(contents.problem)
    return contents


# --- README ----------------------------------------------------------------------------------------
def step_groups(record: RunRecord) -> list[tuple[str, list[str]]]:
    """The run's steps grouped by compile target, in run order: one `invoke repro` per group."""
    groups: dict[str, list[str]] = {}
    for step in record.steps:
        groups.setdefault(step.arch, []).append(step.step)
    if not groups:  # the run ended before its steps were known: replay what was asked
        asked = record.request.get("steps")
        arch = record.request.get("arch")
        groups[arch if isinstance(arch, str) else ""] = [str(s) for s in asked] if isinstance(asked, list) else []
    return [(arch, steps) for arch, steps in groups.items() if steps]


def repro_commands(record: RunRecord, *, image: str | None = None) -> list[str]:
    backend = record.backend or str(record.request.get("backend") or "auto")
    prefix = f"GPUREPRO_IMAGE={shlex.quote(image)} " if image else ""
    commands = []
    for arch, steps in step_groups(record):
        parts = [f"{prefix}invoke repro {','.join(steps)}"]
        if arch:
            parts.append(f"--arch {arch}")
        parts.append(f"--backend {backend}")
        if record.compile_only:
            parts.append("--compile-only")
        commands.append(" ".join(parts))
    return commands


def _md(text) -> str:
    return terminal_safe(md_cell(text))


def render_readme(record: RunRecord, bundle_name: str) -> str:
    image_ref = record.env("image_digest") or record.env("image_id")
    host = record.host
    lines = [
        f"# gpurepro run {record.run_id}",
        "",
        f"Status **{record.status}** (exit code {record.exit_code}), started {record.started_at}, "
        f"finished {record.finished_at}, on {host.get('hostname')} ({host.get('platform')}) with the "
        f"{record.backend} backend, gpurepro {record.tool.get('version')}.",
        "",
        "## Check it, read it, run it again",
        "",
        "```bash",
        f"invoke bundle.verify {bundle_name}    # every file against MANIFEST.json (sha256, size)",
        f"invoke bundle.inspect {bundle_name}   # steps, outcomes, environment; extracts and runs nothing",
        f"invoke bundle.replay {bundle_name}    # the same steps with the same flags here; old vs new outcomes",
        "```",
        "",
        "## By hand, exactly as it ran",
        "",
        "```bash",
        f"git checkout {record.git_commit or '<commit not recorded>'}"
        + ("   # the run's checkout had uncommitted changes: the sources as compiled are in run/steps/<step>/"
           if record.git_dirty else ""),
    ]
    docker = record.backend == "docker"
    if docker and record.env("image_digest"):
        lines.append(f"docker pull {record.env('image_digest')}   # or build it: invoke image.base image.build")
    elif docker:
        lines.append(f"invoke image.base image.build   # the run used {record.env('image')} (id {record.env('image_id')})")
    lines += repro_commands(record, image=image_ref if docker else None)
    if record.kind == "kernels" and record.reproduce:  # a kernels.test run records its own command
        lines.append(record.reproduce)
    lines += ["```", "", f"Recorded command: `{' '.join(record.command)}`", "",
              "## Steps", "", "| step | arch | expected | observed | verdict | reason |", "|---|---|---|---|---|---|"]
    for step in record.steps:
        lines.append(f"| {_md(step.step)} | {_md(step.arch)} | {_md(step.expected or 'unknown')} | "
                     f"{_md(step.outcome)} | {_md(step.verdict)} | {_md(step.reason)} |")
    lines += ["", "## Where and with what", "", "| fact | value |", "|---|---|"]
    facts = {"git commit": record.git_commit, "git dirty": record.git_dirty, "backend": record.backend,
             **{k: v for k, v in record.environment.items() if v not in (None, "")}}
    lines += [f"| {_md(k)} | {_md(v)} |" for k, v in facts.items()]
    variables = record.env_vars
    redacted = sorted(k for k, v in variables.items() if v == REDACTED)
    unrecorded = sum(1 for v in variables.values() if v == NOT_RECORDED)
    lines += ["", f"{len(variables)} environment variables are recorded in run/run.json (`env_vars`)"
              + (f", {unrecorded} by name only (not on the allowlist)" if unrecorded else "")
              + (f"; values redacted: {', '.join(redacted)}." if redacted else "."), ""]
    # recorded text cannot add lines or terminal escapes to a file people `cat`
    return "\n".join(terminal_safe(line) for line in lines)


# --- inspect ---------------------------------------------------------------------------------------
def summary_lines(contents: Contents) -> list[str]:
    """What `bundle.inspect` prints: one line per fact, every recorded value terminal-safe."""
    record = contents.record
    gpu = (f"{record.env('gpu_name')} ({record.env('gpu_arch')}, driver {record.env('driver_version')})"
           if record.env("gpu_name") else "no GPU")
    integrity = "ok" if contents.problem is None else f"FAILED: {contents.problem}"
    variables = record.env_vars
    redacted = sorted(str(k) for k, v in variables.items() if v == REDACTED)
    unrecorded = sum(1 for v in variables.values() if v == NOT_RECORDED)
    host, tool = record.host, contents.manifest.get("tool")
    lines = [
        f"bundle {contents.path.name}: format {contents.manifest.get('format_version')}, made by gpurepro "
        f"{tool.get('version') if isinstance(tool, dict) else None}, {len(contents.digests)} files, "
        f"{contents.bundle_bytes} bytes",
        f"integrity: {integrity}",
        f"run {record.run_id}: status {record.status}, exit code {record.exit_code}, "
        f"{record.started_at} .. {record.finished_at}",
        f"command: {' '.join(record.command)}",
        f"git: {record.git_commit or 'n/a'}{' (dirty)' if record.git_dirty else ''}"
        f"{' on ' + str(record.git['branch']) if record.git.get('branch') else ''}",
        f"host: {host.get('hostname')} ({host.get('platform')}, Python {host.get('python')}, {host.get('cpus')} CPUs)",
        f"backend: {record.backend}" + (f"; image {record.env('image')} id {record.env('image_id')}"
                                        f" digest {record.env('image_digest') or 'none'}" if record.env("image") else ""),
        f"toolchain: nvcc {record.env('nvcc_version', '?')}, CUTLASS {record.env('cutlass_version', '?')}, "
        f"FlashInfer {record.env('flashinfer_version', '?')}; device: {gpu}",
        f"environment variables: {len(variables)} recorded, {len(redacted)} redacted"
        + (f" ({', '.join(redacted)})" if redacted else "")
        + (f", {unrecorded} by name only" if unrecorded else ""),
    ]
    # each line is built from recorded fields: escaping the whole line leaves no field a way to add a line
    return [terminal_safe(line) for line in lines]


def inspect_rows(contents: Contents) -> list[tuple[str, ...]]:
    """The steps table of `bundle.inspect`: (step, arch, expected, observed, verdict, reason), terminal-safe."""
    results = contents.step_results()
    rows = []
    for step in contents.record.steps:
        full = results.get(step.step)
        reason = step.reason or (full.get("reason") if isinstance(full, dict) else None)
        rows.append(tuple(terminal_safe(v) for v in (step.step, step.arch, step.expected or "unknown", step.outcome,
                                                     step.verdict, reason)))
    return rows


def _record_of(data, fallback_id: str) -> RunRecord:
    """A bundled run.json as a typed record; anything unreadable reads as an empty record."""
    try:
        return RunRecord.from_json(data)
    except ValueError:
        return RunRecord(run_id=str(fallback_id))
