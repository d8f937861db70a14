"""Entry points shared by the Invoke tasks and `python -m gpurepro`.

Each returns an exit code (docs/contracts.md) or raises a GpuReproError, which the front ends turn into one
line on stderr and that error's exit code.
"""
from __future__ import annotations

import pathlib
import re
import sys

from .config import load_config
from .environment import invoked_command
from .errors import BadInputError, InfraError, UsageError
from .manifest import load_manifest
from .render.console import Console
from .suites.repro import RunRequest, execute
from .validate import check_arch, parse_jobs


def split_steps(steps) -> list[str]:
    """`invoke repro step01,step02` (Invoke has no variadic positionals) or a list from argparse."""
    if not steps:
        return []
    items = steps if isinstance(steps, (list, tuple)) else [steps]
    return [s for item in items for s in re.split(r"[,\s]+", item) if s]


def repro(steps=None, *, all=False, arch=None, backend="auto", compile_only=False, jobs=None, record=False,
          no_cache=False, toolchain=None, force_arch=False, config=None, argv=None, console=None) -> int:
    cfg = load_config(config)
    if arch is not None:
        check_arch(arch)
    steps = split_steps(steps)
    if steps == ["all"]:  # `invoke repro all`: Invoke cannot take --all without a positional
        steps, all = [], True
    request = RunRequest(steps=steps, all=all, arch=arch, backend=backend, compile_only=compile_only,
                         jobs=parse_jobs(jobs), no_cache=no_cache, argv=invoked_command(argv),
                         toolchains=_toolchain_names(cfg, toolchain), force_arch=force_arch)
    console = console or Console()
    outcome = execute(cfg, request, console=console)
    if record:
        _record(cfg, outcome.results, console)
    publish_to_ci(cfg, outcome.run.path / "summary.md", lambda: _annotation_rows(cfg, outcome.results), console)
    _raise_if_failed(outcome)
    return outcome.exit_code


def _annotation_rows(cfg, results, target: str | None = None) -> list[dict]:
    """What GitHub annotates: each departed step, pointing at its source file."""
    try:
        manifest = load_manifest(cfg.manifest)
    except BadInputError:
        manifest = None
    rows = []
    for r in results:
        step = manifest.steps.get(r.step) if manifest else None
        source = (cfg.repros_dir / step.file).relative_to(cfg.root) if step and cfg.repros_dir.is_relative_to(cfg.root) \
            else None
        rows.append({"step": r.step, "file": str(source) if source else None, "verdict": r.verdict.value,
                     "reason": r.reason, "expected": r.expected, "observed": r.outcome.value, "target": target})
    return rows


def publish_to_ci(cfg, summary: pathlib.Path, rows, console) -> None:
    """On GitHub Actions: the run's summary.md on the job page ($GITHUB_STEP_SUMMARY) and `::error`/`::warning`
    annotations at the steps' sources. A summary that cannot be written is a warning, never the run's verdict.
    `rows`: the annotation rows, or a function making them (only called on GitHub Actions: it reads the
    manifest again)."""
    import os

    from .ci_output import github_annotations, github_step_summary

    if summary.is_file():
        try:
            github_step_summary(summary)
        except InfraError as exc:
            console.error(f"gpurepro: warning: {exc.one_line()}")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(rows() if callable(rows) else rows, root=cfg.root):
            console.out.print(line, markup=False, highlight=False, soft_wrap=True)


def _toolchain_names(cfg, value) -> list[str] | None:
    """--toolchain a,b | all -> names, checked against ci/toolchains.yaml before any work (exit 2)."""
    names = split_steps(value)
    if not names:
        return None
    from .toolchains import load_toolchains, toolchains_file

    chosen = load_toolchains(toolchains_file(cfg)).select(names)
    return [t.name for t in chosen]


def _raise_if_failed(outcome) -> None:
    """A run whose evidence is incomplete (infrastructure) ends with one line on stderr and exit 3."""
    from .run import RunRecord, STATUS_FAILED

    if outcome.status == STATUS_FAILED:
        record = RunRecord.read(outcome.run.path)
        raise InfraError(f"{record.error or 'the run failed'} (run: {outcome.run.path})")


def _record(cfg, results, console) -> None:
    from .chain import record_expectations

    devices = {r.device_arch for r in results}
    if len(devices) > 1:
        raise UsageError("--record takes results from one device arch at a time")
    changes = record_expectations(cfg.manifest, results)
    for change in changes:
        console.info(f"recorded {change}")
    console.info(f"{len(changes)} expectation(s) changed in {cfg.manifest.name}")


def diff(step, *, config=None) -> int:
    from .chain import step_diff

    cfg = load_config(config)
    manifest = load_manifest(cfg.manifest)
    print(step_diff(manifest, manifest.get(step)), end="")
    return 0


def bisect(*, from_step=None, to_step=None, arch=None, backend="auto", git=False, jobs=None, compile_only=False,
           no_cache=False, toolchains=None, config=None, argv=None, console=None) -> int:
    from .chain import flip_table, git_bisect_code

    cfg = load_config(config)
    manifest = load_manifest(cfg.manifest)
    if toolchains:
        return _bisect_toolchains(cfg, manifest, from_step, to_step, arch=arch, backend=backend, git=git, jobs=jobs,
                                  compile_only=compile_only, no_cache=no_cache, toolchains=toolchains, argv=argv,
                                  console=console or Console())
    chain = manifest.chain(from_step, to_step)
    console = console or Console()
    if arch is not None:
        check_arch(arch)
    request = RunRequest(steps=[s.id for s in chain], arch=arch, backend=backend, jobs=parse_jobs(jobs),
                         compile_only=compile_only, no_cache=no_cache, argv=invoked_command(argv))
    outcome = execute(cfg, request, console=console)
    rows, first = flip_table(chain, outcome.results)
    console.flip_table(rows, first, outcome.results)
    publish_to_ci(cfg, outcome.run.path / "summary.md", lambda: _annotation_rows(cfg, outcome.results), console)
    return git_bisect_code(outcome.results) if git else outcome.exit_code


def _bisect_toolchains(cfg, manifest, from_step, to_step, *, arch, backend, git, jobs, compile_only, no_cache,
                       toolchains, argv, console) -> int:
    """One step on each toolchain in order: the first toolchain whose outcome differs from the first one's, with
    both compile logs' first errors side by side."""
    from .chain import GIT_BAD, GIT_GOOD
    from .classify import first_compile_error

    if not from_step or (to_step and to_step != from_step):
        raise UsageError("--toolchains bisects one step", hint="name it with --from STEP")
    step = manifest.get(from_step)
    if arch is not None:
        check_arch(arch)
    names = _toolchain_names(cfg, toolchains)
    if len(names) < 2:
        raise UsageError("--toolchains needs at least two toolchains to compare")
    request = RunRequest(steps=[step.id], arch=arch, backend=backend, jobs=parse_jobs(jobs), compile_only=compile_only,
                         no_cache=no_cache, toolchains=names, argv=invoked_command(argv))
    outcome = execute(cfg, request, console=console)
    by_toolchain = {r.toolchain: r for r in outcome.results}
    ordered = [by_toolchain[n] for n in names if n in by_toolchain]
    judged = [r for r in ordered if r.verdict.value != "infra"]  # an infra cell says nothing: skipped, as git does
    if not judged:
        raise InfraError(f"no toolchain could build {step.id}: {ordered[0].reason}")
    base = judged[0]
    flip = next((r for r in judged[1:] if r.outcome != base.outcome), None)

    def first_error(result) -> str:
        if result.outcome.value != "compile_error":
            return f"{result.outcome.value}: {result.reason}"
        log = outcome.run.path / "steps" / result.dirname / "compile.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return first_compile_error(text) if text else result.reason

    console.table(f"{step.id} across toolchains", ("toolchain", "observed", "reason"),
                  [(r.toolchain, r.outcome.value, r.reason) for r in ordered])
    skipped = [r.toolchain for r in ordered if r not in judged]
    if skipped:
        console.info(f"skipped (infrastructure, no verdict): {', '.join(skipped)}")
    if flip is None:
        console.info(f"no flip: {step.id} is {base.outcome.value} on every toolchain that could build it")
    else:
        console.table(f"first flip: {flip.toolchain} ({base.outcome.value} -> {flip.outcome.value})",
                      (base.toolchain or "", flip.toolchain or ""), [(first_error(base), first_error(flip))])
        console.info(f"first flip: {flip.toolchain} ({flip.outcome.value}, was {base.outcome.value} on "
                     f"{base.toolchain})")
    publish_to_ci(cfg, outcome.run.path / "summary.md", lambda: _annotation_rows(cfg, outcome.results), console)
    if git:
        return GIT_GOOD if flip is None else GIT_BAD
    return 1 if flip is not None else outcome.exit_code


def layout_diff(step_a, step_b, *, config=None, console=None) -> int:
    from .chain import diff_layouts, find_layouts

    cfg = load_config(config)
    path_a, a = find_layouts(cfg.reports_dir, step_a)
    path_b, b = find_layouts(cfg.reports_dir, step_b)
    console = console or Console()
    console.layout_diff(step_a, step_b, diff_layouts(a, b), (path_a, path_b))
    return 0


def list_steps(*, config=None, console=None) -> int:
    cfg = load_config(config)
    manifest = load_manifest(cfg.manifest)
    console = console or Console()
    console.table(str(manifest.path.relative_to(cfg.root)), ("step", "parent", "targets", "expect", "change"),
                  [(step.id, step.parent or "-", " ".join(step.targets),
                    ", ".join(f"{k}: {v}" for k, v in step.expect.items()), step.change)
                   for step in manifest.steps.values()])
    return 0


def kernels_test(*, backend="auto", keyword=None, marker=None, python=None, timeout=None, config=None, argv=None,
                 console=None) -> int:
    """Run tests/kernels where the kernels run (the container, or this host) and record it like a repro run."""
    from .suites.kernels import KernelsRequest, execute as run_kernels
    from .runners import BACKENDS

    cfg = load_config(config)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
    if timeout is not None:
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise UsageError(f"--timeout {timeout!r}: expected a number of seconds") from None
        if timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    request = KernelsRequest(backend=backend, keyword=keyword or None, marker=marker or None, python=python or None,
                             timeout_s=timeout or None, argv=list(argv or sys.argv))
    return run_kernels(cfg, request, console=console or Console()).exit_code


def image_base(*, force=False, suite="bookworm", mirror=None, config=None) -> int:
    from .images import build_base
    from .runners.docker import connect

    cfg = load_config(config)
    build_base(connect(timeout=600), cfg, suite=suite, mirror=mirror, force=force)
    return 0


def _toolchains(cfg, value):
    from .toolchains import load_toolchains, toolchains_file

    return load_toolchains(toolchains_file(cfg)).select(split_steps(value))


def image_build(*, target="vllm-dev", toolchain=None, config=None) -> int:
    from .images import build_image, build_toolchain_images
    from .runners.docker import connect

    cfg = load_config(config)
    if target not in cfg.docker.images:
        raise UsageError(f"unknown image target {target!r}", hint=f"one of: {', '.join(cfg.docker.images)}")
    client = connect(timeout=1800)
    if toolchain:
        for chosen in _toolchains(cfg, toolchain):
            started = __import__("time").monotonic()
            tags = build_toolchain_images(client, cfg, chosen, target=target, tag_latest=chosen.default)
            print(f"built {', '.join(tags)} in {__import__('time').monotonic() - started:.0f} s")
        return 0
    tag = build_image(client, cfg, target)
    print(f"built {tag}")
    return 0


def image_wheels(*, target="toolchain", toolchain=None, config=None) -> int:
    from .images import download_toolchain_wheels, download_wheels

    cfg = load_config(config)
    if toolchain:
        for chosen in _toolchains(cfg, toolchain):
            print(f"wheelhouse ready for {chosen.name}: {download_toolchain_wheels(cfg, chosen)}")
        return 0
    path = download_wheels(cfg, target)
    print(f"wheelhouse ready: {path}")
    return 0


def toolchain_headers(*, wheel=None, dest=None, toolchain=None, config=None) -> int:
    """Lay out FlashInfer/CUTLASS headers from the pinned wheel for the host backend."""
    import importlib.util

    from .images import download_wheels

    cfg = load_config(config)
    if toolchain:
        from .images import layout_headers

        chosen = _toolchains(cfg, toolchain)
        if dest and len(chosen) > 1:
            raise UsageError("--dest takes one toolchain", hint="leave --dest out: each goes to its own directory")
        for each in chosen:
            print(f"laid out {each.name}'s headers in {layout_headers(cfg, each, dest)}")
        return 0
    dest_path = pathlib.Path(dest or cfg.host.flashinfer).expanduser()
    if wheel is None:
        wheelhouse = download_wheels(cfg, "toolchain")
        found = sorted(wheelhouse.glob("flashinfer_python-*.whl"))
        if not found:
            raise BadInputError("no flashinfer_python wheel in the wheelhouse")
        wheel = found[-1]
    script = cfg.root / "docker" / "layout_flashinfer.py"
    spec = importlib.util.spec_from_file_location("layout_flashinfer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    count = module.layout(pathlib.Path(wheel), dest_path)
    print(f"laid out {count} headers under {dest_path} (set GPUREPRO_FLASHINFER={dest_path} if not the default)")
    return 0


# --- sharing runs: bundles, the HTML report, retention ----------------------------------------------
def _need(value, what: str):
    if not value:
        raise UsageError(f"no {what} given")
    return value


def bundle_create(run=None, *, output=None, config=None, console=None) -> int:
    from .bundle import create, resolve_run

    cfg = load_config(config)
    made = create(resolve_run(cfg.reports_dir, run), pathlib.Path(output) if output else None)
    console = console or Console()
    console.info(f"bundled run {made.run_id}: {made.files} files, {made.unpacked_bytes} bytes -> "
                 f"{made.bundle_bytes} bytes in {made.seconds:.2f} s")
    print(made.path)
    return 0


def bundle_verify(file=None, *, console=None) -> int:
    from .bundle import verify

    contents = verify(pathlib.Path(_need(file, "bundle file")))
    console = console or Console()
    console.info(f"ok: {contents.path.name}: run {contents.top}, {len(contents.digests)} files match "
                 f"MANIFEST.json, format {contents.manifest['format_version']}")
    return 0


def bundle_inspect(file=None, *, console=None) -> int:
    from .bundle import BundleError, inspect_rows, read, summary_lines

    contents = read(pathlib.Path(_need(file, "bundle file")))  # in memory: nothing extracted, nothing run
    console = console or Console()
    for line in summary_lines(contents):
        console.info(line)
    # recorded text, terminal-safe
    console.table("steps", ("step", "arch", "expected", "observed", "verdict", "reason"), inspect_rows(contents))
    if contents.problem:
        raise BundleError(contents.problem)
    return 0


def bundle_replay(file=None, *, backend=None, dest=None, no_cache=False, config=None, argv=None, console=None,
                  runner=None) -> int:
    from .replay import replay

    cfg = load_config(config)
    console = console or Console()
    done = replay(pathlib.Path(_need(file, "bundle file")), cfg, backend=backend, no_cache=no_cache,
                  dest=pathlib.Path(dest) if dest else None, console=console, runner=runner,
                  argv=invoked_command(argv))
    console.table(f"replay of {pathlib.Path(file).name}", ("step", "arch", "bundle", "here", "changed", "reason here"),
                  [(row.step, row.arch, row.old, row.new, "" if row.same else "CHANGED", row.new_reason)
                   for row in done.rows], flag=4)
    if done.differences:
        console.info("differs from where the bundle ran:")
        for line in done.differences:
            console.info(f"  {line}")
    else:
        console.info("same git commit, tool, backend, image and toolchain as the bundled run")
    for path in done.runs:
        console.info(f"replay run: {path}")
    return done.exit_code


def report(run=None, *, config=None) -> int:
    from .bundle import resolve_run
    from .render.html import write_report

    cfg = load_config(config)
    try:
        manifest = load_manifest(cfg.manifest)
    except BadInputError:  # the page is built from the run directory; the manifest only adds parents
        manifest = None
    print(write_report(resolve_run(cfg.reports_dir, run), manifest=manifest))
    return 0


def reports_prune(keep=None, *, dry_run=False, config=None, console=None) -> int:
    from .retention import prune

    cfg = load_config(config)
    if keep is None:
        raise UsageError("--keep N is required (how many of the newest runs to keep)")
    try:
        keep = int(keep)
    except ValueError:
        raise UsageError(f"--keep {keep!r}: expected a number of runs >= 0") from None
    done = prune(cfg.reports_dir, keep, dry_run=dry_run)
    console = console or Console()
    verb = "would remove" if dry_run else "removed"
    for run_id in done.removed:
        console.info(f"{verb} {run_id}")
    for run_id, why in done.protected.items():
        console.info(f"kept {run_id}: {why}")
    console.info(f"{verb} {len(done.removed)} run(s), kept {len(done.kept) + len(done.protected)} under {cfg.reports_dir}")
    return 0


def ci_nightly(targets=None, *, targets_file=None, steps=None, jobs=None, no_cache=False, next_toolchain=None,
               config=None, console=None) -> int:
    """Every step on every target of ci/targets.yaml (or the named ones), concurrently; one merged report."""
    from .nightly import load_targets, nightly, select_targets

    cfg = load_config(config)
    path = pathlib.Path(targets_file) if targets_file else cfg.root / "ci" / "targets.yaml"
    chosen = select_targets(load_targets(path), split_steps(targets))
    console = console or Console()
    next_names = _toolchain_names(cfg, next_toolchain)
    if next_names and len(next_names) != 1:
        raise UsageError("--next-toolchain takes one toolchain")
    outcome = nightly(cfg, chosen, steps=split_steps(steps) or None, jobs=parse_jobs(jobs), no_cache=no_cache,
                      next_toolchain=next_names[0] if next_names else None,
                      reports_dir=cfg.reports_dir / "nightly", log=console.info)
    console.info((outcome.path / "summary.md").read_text())
    console.info(f"report: {(outcome.path / 'index.html').resolve().as_uri()}")
    rows = [{**row, "verdict": entry.classification}
            for report in outcome.targets for entry in report.entries
            for row in _annotation_rows(cfg, [entry.result], target=report.target.name)]
    publish_to_ci(cfg, outcome.path / "summary.md", rows, console)
    return outcome.exit_code


def report_merge(run_dirs, *, out=None, config=None, console=None) -> int:
    """Merge per-runner run (or nightly) directories into one report: one JUnit suite per target."""
    from .nightly import merge_reports

    cfg = load_config(config)
    dirs = [pathlib.Path(d) for d in split_steps(run_dirs)]
    path, code = merge_reports(dirs, pathlib.Path(out) if out else cfg.reports_dir / "merged")
    console = console or Console()
    console.info((path / "summary.md").read_text())
    console.info(f"report: {(path / 'index.html').resolve().as_uri()}")
    publish_to_ci(cfg, path / "summary.md", [], console)
    return code


# --- the compile cache --------------------------------------------------------------------------------
def cache_stats(*, config=None, console=None) -> int:
    from .cache import cache_stats as stats

    cfg = load_config(config)
    console = console or Console()
    console.table("compile cache", ("fact", "value"), stats(cfg.cache.dir, cfg.cache.max_bytes))
    return 0


def cache_prune(*, max_gb=None, older_than_days=None, all=False, config=None, console=None) -> int:
    from .cache import cache_prune as prune

    cfg = load_config(config)
    if max_gb is None and older_than_days is None and not all:
        raise UsageError("say what to remove", hint="--max-gb N, --older-than-days N or --all")
    try:
        to_bytes = None if max_gb is None else int(float(max_gb) * 2**30)
        days = None if older_than_days is None else float(older_than_days)
    except ValueError:
        raise UsageError(f"--max-gb / --older-than-days: expected numbers, got {max_gb!r} / {older_than_days!r}") from None
    if (to_bytes is not None and to_bytes < 0) or (days is not None and days < 0):
        raise UsageError("--max-gb and --older-than-days must not be negative")
    done = prune(cfg.cache.dir, cfg.cache.max_bytes, to_bytes=to_bytes, older_than_days=days, all=all)
    console = console or Console()
    console.info(f"removed {done['removed']} entries ({done['bytes']} bytes); {done['entries']} left "
                 f"({done['bytes_left']} bytes) in {cfg.cache.dir}")
    return 0
