"""`invoke bundle.replay`: run a bundle's steps again here with the same flags, and say what changed.

    verify the bundle -> check its steps exist here -> extract safely (sources, to compare with this checkout)
    -> the recorded image when this engine has it -> the repro suite, once per compile target
    -> old vs new outcome per step, and what differs between there and here

It reads the bundle through gpurepro.bundle (verify, the typed record) and runs steps through the repro suite;
it knows neither's internals.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shutil
import sys
import tempfile
from dataclasses import dataclass

from .bundle import RUN_DIR, step_groups, verify
from .environment import invoked_command
from .errors import EXIT_DEPARTED, EXIT_INFRA, EXIT_OK, BadInputError, UsageError
from .run.record import RunRecord
from .safe_tar import DEFAULT_LIMITS, Limits, extract
from .text import terminal_safe

COMPARED_FACTS = ("image", "image_id", "image_digest", "nvcc_version", "cutlass_version", "flashinfer_version",
                  "gpu_name", "gpu_arch", "driver_version")


@dataclass
class ReplayRow:
    step: str
    arch: str
    old: str
    new: str
    new_reason: str

    @property
    def same(self) -> bool:
        return self.old == self.new


@dataclass
class Replay:
    rows: list[ReplayRow]
    differences: list[str]
    runs: list[pathlib.Path]
    exit_code: int


def differences(old: RunRecord, new: RunRecord) -> list[str]:
    """What differs between where the bundle ran and where it was replayed, one line each."""
    pairs = [("git commit", old.git_commit, new.git_commit), ("git dirty", old.git_dirty, new.git_dirty),
             ("tool version", old.tool.get("version"), new.tool.get("version")),
             ("backend", old.backend, new.backend)]
    same_image = bool(old.env("image_id")) and old.env("image_id") == new.env("image_id")
    # replaying by image id renames the reference (tag -> id): the same id is the same image
    pairs += [(key, old.env(key), new.env(key)) for key in COMPARED_FACTS if not (key == "image" and same_image)]
    out = []
    for name, a, b in pairs:
        if (a or None) != (b or None):
            out.append(terminal_safe(f"{name}: bundle {a if a not in (None, '') else 'none'}, "
                                     f"here {b if b not in (None, '') else 'none'}"))
    return out


def source_differences(bundle_run: pathlib.Path, config, steps: list[str]) -> list[str]:
    """Which of this checkout's step sources differ from the copies the bundled run compiled."""
    from .manifest import load_manifest
    from .suites.repro import source_files

    manifest = load_manifest(config.manifest)
    out = []
    for step_id in steps:
        local = source_files(config.repros_dir, manifest.get(step_id))
        bundled = bundle_run / "steps" / step_id
        for name, data in sorted(local.items()):
            old = bundled / name
            if not old.is_file():
                out.append(f"source {step_id}/{name}: not in the bundle")
            elif old.read_bytes() != data:
                out.append(f"source {step_id}/{name}: differs from the bundled copy")
    return out


def _local_image(config, record: RunRecord) -> tuple[object, list[str]]:
    """The config to replay with: the recorded image when this engine has it (by id), else the configured one."""
    wanted = record.env("image_id")
    if record.backend != "docker" or not wanted:
        return config, []
    try:
        from .runners.docker import connect

        client = connect(timeout=30)
        client.images.get(wanted)
    except Exception:  # noqa: BLE001 - no engine or no such image: replay with the configured image, and say so
        return config, [f"image {wanted} (digest {record.env('image_digest') or 'none'}) is not here; "
                        f"replaying with {config.docker.image}"]
    return dataclasses.replace(config, docker=dataclasses.replace(config.docker, image=wanted)), []


def _compare_page(bundle_run: pathlib.Path, new_run: pathlib.Path, manifest) -> None:
    """compare.html in the new run: the bundled run beside the replay, step by step."""
    from .render.html import write_comparison

    try:
        write_comparison(bundle_run, new_run, manifest)
    except Exception as exc:  # noqa: BLE001 - the replay's verdict does not depend on its page
        print(f"gpurepro: compare.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)


def replay(path: pathlib.Path, config, *, backend: str | None = None, dest: pathlib.Path | None = None,
           console=None, runner=None, argv: list[str] | None = None, no_cache: bool = False,
           limits: Limits = DEFAULT_LIMITS) -> Replay:
    from .manifest import load_manifest
    from .suites.repro import RunRequest, execute

    if dest is not None and pathlib.Path(dest).exists() and not pathlib.Path(dest).is_dir():
        raise UsageError(f"--dest {terminal_safe(dest)}: is a file, not a directory",
                         hint="give --dest an empty or new directory")
    contents = verify(path, limits=limits)
    record = contents.record
    groups = step_groups(record)
    if record.kind == "kernels":
        raise BadInputError(terminal_safe(f"{path}: a kernels.test run; replay it with "
                                          f"`{record.reproduce or 'invoke kernels.test'}`"))
    if not groups:
        raise BadInputError(f"{terminal_safe(path)}: the bundled run has no steps to replay")
    manifest = load_manifest(config.manifest)
    missing = [s for _, steps in groups for s in steps if s not in manifest.steps]
    if missing:
        commit = record.git_commit
        raise BadInputError(f"step {terminal_safe(missing[0])} of the bundle is not in {config.manifest}",
                            hint=f"check out the run's commit {terminal_safe(commit)}" if commit else None)
    keep = dest is not None
    where = pathlib.Path(dest) if keep else pathlib.Path(tempfile.mkdtemp(prefix="gpurepro-replay-"))
    try:
        extract(path, where, label=pathlib.Path(path).name, limits=limits)
        bundle_run = where / contents.top / RUN_DIR
        notes = source_differences(bundle_run, config, [s for _, steps in groups for s in steps])
        run_config, image_notes = _local_image(config, record)
        chosen_backend = backend or record.backend or "auto"
        old = {(s.step, s.arch): s for s in record.steps}
        rows, runs, new_records, codes, same_inputs = [], [], [], [], []
        for arch, steps in groups:
            request = RunRequest(steps=steps, arch=arch or None, backend=chosen_backend,
                                 compile_only=record.compile_only, no_cache=no_cache,
                                 argv=list(argv) if argv else invoked_command(),
                                 recorded_keys={(s.step, s.arch): s.cache.get("key") for s in record.steps
                                                if isinstance(s.cache, dict) and s.cache.get("key")})
            outcome = execute(run_config, request, console=console, runner=runner)
            runs.append(outcome.run.path)
            new_records.append(RunRecord.read(outcome.run.path))
            codes.append(outcome.exit_code)
            _compare_page(bundle_run, outcome.run.path, manifest)
            for result in outcome.results:
                before = old.get((result.step, result.arch))
                # display strings: the old outcome comes from the bundle, the reason from a program's output
                if result.cache and "same_as_recorded" in result.cache:
                    same_inputs.append(result.cache["same_as_recorded"])
                rows.append(ReplayRow(terminal_safe(result.step), terminal_safe(result.arch),
                                      terminal_safe(before.outcome if before else "not run"),
                                      terminal_safe(result.outcome.value), terminal_safe(result.reason)))
    finally:
        if not keep:
            shutil.rmtree(where, ignore_errors=True)
    diffs = [terminal_safe(line) for line in image_notes + differences(record, new_records[0]) + notes]
    if same_inputs and not all(same_inputs):
        diffs.append(f"compile inputs: {same_inputs.count(False)} of {len(same_inputs)} steps' cache keys differ "
                     "from the bundled run's (another image, source, patch or flag)")
    if EXIT_INFRA in codes:
        code = EXIT_INFRA
    else:
        code = EXIT_OK if all(r.same for r in rows) else EXIT_DEPARTED
    return Replay(rows, diffs, runs, code)
