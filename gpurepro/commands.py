"""The command table: every gpurepro command, as an Invoke task.

tasks.py (the `invoke` front end) exports `ns`; `python -m gpurepro` builds its parser from the same tasks
(gpurepro/cli.py), so both take the same names, options and help. Each task's docstring is its help and its
body one call into the engine (gpurepro/app.py); engine errors become one line and the contract's exit code.
"""
import importlib.util
import sys

from invoke import Collection

from .invoke_support import engine_task, install_usage_errors


def _lazy(name: str):
    """The module, imported on first use: a command the warm engine runs (gpurepro/warm.py) never needs the
    engine in this process, and the engine is most of a command's start-up."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


app = _lazy("gpurepro.app")

install_usage_errors()


@engine_task(positional=["steps"], default=True, help={
    "steps": "step ids, comma-separated (step01,step14), or `all` for every step in the manifest",
    "arch": "compile target, e.g. sm_120a or sm_121a (default: each step's first target)",
    "backend": "docker | host | auto (docker when a daemon answers)",
    "compile-only": "compile and record, never run on a device",
    "jobs": "parallel compiles (default: bounded by cores and memory)",
    "record": "write the observed outcomes back into repros/manifest.yaml as expectations",
    "no-cache": "compile every step (the compile cache is written, not read)",
    "toolchain": "named toolchains from ci/toolchains.yaml, comma-separated, or `all`: every step with each",
    "force-arch": "compile for --arch even where the manifest does not list it as the step's target",
})
def run(c, steps=None, arch=None, backend="auto", compile_only=False, jobs=None, record=False, no_cache=False,
        toolchain=None, force_arch=False):
    """Compile, arch-check, run and classify repro steps; write reports/<run-id>/ and JUnit.
    Steps: ids comma-separated; `step1` is taken for `step01`, a typo gets the closest names."""
    return app.repro(steps, arch=arch, backend=backend, compile_only=compile_only, jobs=jobs, record=record,
                     no_cache=no_cache, toolchain=toolchain, force_arch=force_arch)


@engine_task(name="list")
def list_steps(c):
    """List the manifest's steps: parent, compile targets, expectations, the change each makes."""
    return app.list_steps()


@engine_task(positional=["step"], help={"step": "a step id; its source is diffed against its parent's"})
def diff(c, step=None):
    """Show the unified diff of a step against its parent: the one change it makes."""
    return app.diff(step)


@engine_task(name="bisect", help={
    "from": "first step of the chain (default: the chain's root)",
    "to": "last step (default: the manifest's last step)",
    "arch": "compile target, e.g. sm_121a",
    "backend": "docker | host | auto",
    "git": "exit like `git bisect run` wants: 0 good, 1 bad, 125 cannot test",
    "jobs": "parallel compiles",
    "compile-only": "bisect compile outcomes only: nothing runs on a device",
    "no-cache": "compile every step (the compile cache is written, not read)",
    "toolchains": "walk these toolchains (comma-separated, or `all`, in ci/toolchains.yaml's order) for one step "
                  "(--from) instead of the step chain",
})
def bisect_chain(c, from_=None, to=None, arch=None, backend="auto", git=False, jobs=None, compile_only=False,
                 no_cache=False, toolchains=None):
    """Run a parent chain, print the flip table and the first step whose outcome differs from its parent's;
    with --toolchains, run one step on each toolchain and print the first toolchain whose outcome differs."""
    return app.bisect(from_step=from_, to_step=to, arch=arch, backend=backend, git=git, jobs=jobs,
                      compile_only=compile_only, no_cache=no_cache, toolchains=toolchains)


@engine_task(name="diff", positional=["step_a", "step_b"])
def layout_diff(c, step_a=None, step_b=None):
    """Compare two steps' layout dumps (from their latest runs): which fields and bytes differ."""
    return app.layout_diff(step_a, step_b)


@engine_task(help={"force": "rebuild even if the image exists", "mirror": "Debian mirror URL"})
def base(c, force=False, mirror=None):
    """Make the Debian base image locally with debootstrap (no registry needed)."""
    return app.image_base(force=force, mirror=mirror)


@engine_task(help={"target": "vllm-dev (default: toolchain + torch) | toolchain",
                   "toolchain": "named toolchains from ci/toolchains.yaml, comma-separated, or `all` "
                                "(tags gpurepro/<target>:<name>; default: the configured image)"})
def build(c, target="vllm-dev", toolchain=None):
    """Build docker/Dockerfile's target offline from the pinned wheelhouse."""
    return app.image_build(target=target, toolchain=toolchain)


@engine_task(help={"target": "toolchain | vllm-dev", "toolchain": "a named toolchain's wheels instead"})
def wheels(c, target="toolchain", toolchain=None):
    """Download the pinned, hash-checked wheels an image target needs into docker/wheelhouse/."""
    return app.image_wheels(target=target, toolchain=toolchain)


@engine_task(help={"wheel": "a flashinfer-python wheel (default: the pinned one)", "dest": "target directory",
                   "toolchain": "a named toolchain's headers (default dest: ~/.cache/gpurepro/toolchains/<name>)"})
def headers(c, wheel=None, dest=None, toolchain=None):
    """Lay out FlashInfer/CUTLASS headers for the host backend (as /workspace/flashinfer in the image)."""
    return app.toolchain_headers(wheel=wheel, dest=dest, toolchain=toolchain)


# RUN is a flag, not a positional: Invoke cannot leave a positional out (docs/contracts.md, Commands)
@engine_task(name="create", help={
    "run": "run directory or run id (default: reports/latest)",
    "output": "bundle file or directory (default: ./<run-id>.tar.gz)",
})
def bundle_create(c, run="latest", output=None):
    """Pack a run into <run-id>.tar.gz: the run directory, MANIFEST.json (sha256 of every file), README.md."""
    return app.bundle_create(run, output=output)


@engine_task(name="verify", positional=["file"], help={"file": "a bundle (.tar.gz)"})
def bundle_verify(c, file=None):
    """Check a bundle: format version, every file against MANIFEST.json, nothing added or missing."""
    return app.bundle_verify(file)


@engine_task(name="inspect", positional=["file"], help={"file": "a bundle (.tar.gz)"})
def bundle_inspect(c, file=None):
    """Show a bundle's run (steps, outcomes, environment) without extracting or running anything."""
    return app.bundle_inspect(file)


@engine_task(name="replay", positional=["file"], help={
    "file": "a bundle (.tar.gz)",
    "backend": "docker | host | auto (default: the bundled run's backend)",
    "dest": "keep the extracted bundle in this (empty) directory",
    "no-cache": "compile every step (the compile cache is written, not read)",
})
def bundle_replay(c, file=None, backend=None, dest=None, no_cache=False):
    """Run a bundle's steps again here with the same flags; print old vs new outcome per step."""
    return app.bundle_replay(file, backend=backend, dest=dest, no_cache=no_cache)


@engine_task(name="write", default=True, help={
    "run": "run directory or run id (default: reports/latest)"})
def report_write(c, run="latest"):
    """(Re)write a run's self-contained index.html and print its path."""
    return app.report(run)


@engine_task(help={"keep": "how many of the newest runs to keep", "dry-run": "only say what would go"})
def prune(c, keep=None, dry_run=False):
    """Remove old runs under reports/: never the newest, reports/latest's, or a run still in progress."""
    return app.reports_prune(keep, dry_run=dry_run)


@engine_task(name="test", help={
    "backend": "docker | host | auto (docker when a daemon answers)",
    "keyword": "only tests matching this pytest -k expression",
    "marker": "only tests matching this pytest -m expression (e.g. gpu)",
    "python": "host backend: the interpreter to run the tests with (default: this one)",
    "timeout": "seconds for the whole test session (default: gpurepro.yaml kernels.timeout_s)",
})
def kernels_test(c, backend="auto", keyword=None, marker=None, python=None, timeout=None):
    """Run tests/kernels in the vllm-dev container (or on this host); write reports/<run-id>/ and JUnit."""
    return app.kernels_test(backend=backend, keyword=keyword, marker=marker, python=python, timeout=timeout)


@engine_task(name="merge", positional=["run_dirs"], help={
    "run-dirs": "run or nightly directories, comma-separated (e.g. each CI runner's downloaded artifact)",
    "out": "where the merged report goes (default: reports/merged/)",
})
def report_merge(c, run_dirs=None, out=None):
    """Merge per-runner run directories into one report: steps x targets, one JUnit suite per target."""
    return app.report_merge(run_dirs, out=out)


@engine_task(iterable=["target"], help={
    "target": "a target name from the targets file (repeatable; default: all of them)",
    "targets-file": "the targets file (default: ci/targets.yaml)",
    "steps": "step ids, comma-separated (default: every step)",
    "jobs": "parallel compiles per target",
    "no-cache": "compile every step (the compile cache is written, not read)",
    "next-toolchain": "also run every step with this toolchain of ci/toolchains.yaml and report, apart, the steps "
                      "whose outcome would change on upgrade",
})
def nightly(c, target=None, targets_file=None, steps=None, jobs=None, no_cache=False, next_toolchain=None):
    """Every step on every GPU target, concurrently; rerun departures; exit 1 only for what changed."""
    return app.ci_nightly(target, targets_file=targets_file, steps=steps, jobs=jobs, no_cache=no_cache,
                          next_toolchain=next_toolchain)


@engine_task(name="stats")
def cache_stats(c):
    """Show the compile cache: where it is, entries, size against its cap, hits and misses."""
    return app.cache_stats()


@engine_task(name="prune", help={
    "max-gb": "shrink to at most this many GB (least recently used go first)",
    "older-than-days": "remove entries not used for this many days",
    "all": "remove every entry",
})
def cache_prune(c, max_gb=None, older_than_days=None, all=False):
    """Remove compile-cache entries: by size (least recently used first), by age, or all."""
    return app.cache_prune(max_gb=max_gb, older_than_days=older_than_days, all=all)


ns = Collection(Collection("repro", run, list_steps, diff), bisect_chain, Collection("layout", layout_diff),
                Collection("image", base, build, wheels), Collection("toolchain", headers),
                Collection("kernels", kernels_test),
                Collection("bundle", bundle_create, bundle_verify, bundle_inspect, bundle_replay),
                Collection("report", report_write, report_merge), Collection("reports", prune), Collection("ci", nightly),
                Collection("cache", cache_stats, cache_prune))
