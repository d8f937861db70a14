"""The repro pipeline, top to bottom in one place.

    load -> start runner -> for each step: copy in -> compile -> check arch -> run -> classify
         -> copy out -> record (run.json, junit.xml, summary.md, steps/<step>/)

Compiles may run in parallel (bounded by cores and memory); device runs are serial. Any exception
inside a step becomes an outcome with evidence in `outcome_from_exception`, never a traceback.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass, field

from . import __version__, runlock
from .archs import BinaryImages, parse_cuobjdump
from .classify import Classification, ExecResult, classify_compile, classify_run, one_line
from .config import Config
from .environment import git_state, host_facts, invoked_command, memory_gb
from .errors import (EXIT_DEPARTED, EXIT_INFRA, EXIT_OK, GpuReproError, InfraError, InterruptedRun, UsageError,
                     sigterm_interrupts)
from .junit import build_suite, write_suite
from .manifest import Manifest, Step, device_arch_of, load_manifest
from .outcomes import Outcome, StepResult, Verdict, judge
from .redaction import captured_environment
from .report import (STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunDirectory, atomic_write, now_utc,
                     write_json)
from .summary import render_summary
from .runners import Facts, Runner, make_runner

LOG_TAIL_CHARS = 8000
PREFLIGHT_FLAG = "--preflight-only"


@dataclass
class RunRequest:
    steps: list[str] = field(default_factory=list)
    all: bool = False
    arch: str | None = None
    backend: str = "auto"
    compile_only: bool = False
    jobs: int | None = None
    argv: list[str] = field(default_factory=invoked_command)
    prefer_arch: str | None = None  # compile for this where the step lists it, else the step's first target


@dataclass
class RunOutcome:
    run: RunDirectory
    results: list[StepResult]
    status: str
    exit_code: int


@dataclass
class StepContext:
    step: Step
    arch: str
    workdir: str
    result: StepResult
    files_in: dict[str, bytes] = field(default_factory=dict)
    compiled: ExecResult | None = None
    logs: dict[str, str] = field(default_factory=dict)
    done: bool = False  # outcome decided (compile failed, infra error)


# --- selection -------------------------------------------------------------------------------------
def select_steps(manifest: Manifest, request: RunRequest) -> list[Step]:
    if request.all:
        return list(manifest.steps.values())
    if not request.steps:
        raise UsageError("no step given", hint="name one or more steps, or `all`; `invoke repro.list` shows them")
    return manifest.select(request.steps)


def target_arch(step: Step, request: RunRequest, config: Config) -> str:
    if request.arch:
        return request.arch
    if request.prefer_arch and request.prefer_arch in step.targets:
        return request.prefer_arch
    return step.targets[0] if step.targets else config.compile.default_arch


def compile_jobs(config: Config, request: RunRequest, count: int) -> int:
    wanted = request.jobs or config.compile.jobs
    if not wanted:
        by_memory = int(memory_gb() // config.compile.memory_gb_per_job)
        wanted = max(1, min(os.cpu_count() or 1, by_memory))
    return max(1, min(wanted, count))


# --- the pipeline ----------------------------------------------------------------------------------
def execute(config: Config, request: RunRequest, *, console=None, runner: Runner | None = None) -> RunOutcome:
    from .console import Console

    console = console or Console()
    manifest = load_manifest(config.manifest)
    steps = select_steps(manifest, request)
    runner = runner or make_runner(config, request.backend, log=console.info)

    run = RunDirectory.create(config.reports_dir)
    runlock.acquire(run.path)  # marks the run in use (reports.prune, bundle.create) until it ends
    record = _initial_record(config, request, run, runner)
    write_json(run.path / "run.json", record)
    run.point_latest()
    results: list[StepResult] = []
    status = STATUS_FAILED
    restore = sigterm_interrupts()
    runner.run_tag = run.run_id  # lets the runner find this run's processes if it is cancelled
    try:
        runner.start()
        facts = runner.probe(config.compile.nvcc)
        record["environment"] = _environment(facts)
        write_json(run.path / "run.json", record)
        console.environment(facts)
        contexts = [_new_context(config, request, runner, run, step, facts) for step in steps]
        results = [ctx.result for ctx in contexts]

        _compile_all(config, request, runner, contexts, facts, console)
        for ctx in contexts:
            if not ctx.done:
                _guard(ctx, lambda: _check_and_run(config, request, runner, ctx, facts))
            _finish_step(runner, run, ctx, manifest, facts, console)
        status = STATUS_COMPLETE
    except (KeyboardInterrupt, InterruptedRun):
        status = STATUS_INTERRUPTED
        console.error("interrupted: stopping the run's commands; run marked interrupted")
        try:
            runner.cancel(f"{runner.work_root().rstrip('/')}/{run.run_id}")
        except Exception:  # best effort: the record must still be written
            pass
        raise InterruptedRun("interrupted") from None
    except GpuReproError as exc:
        record["error"] = exc.one_line()
        raise
    finally:
        restore()
        try:
            _record_run(config, run, record, results, status)
            _write_html(run, manifest)
            try:
                if status != STATUS_INTERRUPTED:  # cancel() already cleaned up
                    runner.remove_dir(f"{runner.work_root().rstrip('/')}/{run.run_id}")
                runner.close()
            except Exception:  # closing must not hide the run's own error
                pass
        finally:
            runlock.release(run.path)
    exit_code = exit_code_for(results)
    console.results(results, run)
    return RunOutcome(run=run, results=results, status=status, exit_code=exit_code)


def exit_code_for(results: list[StepResult]) -> int:
    if any(r.verdict is Verdict.INFRA for r in results):
        return EXIT_INFRA
    if any(r.verdict is Verdict.DEPARTED for r in results):
        return EXIT_DEPARTED
    return EXIT_OK


def _new_context(config, request, runner, run, step, facts) -> StepContext:
    arch = target_arch(step, request, config)
    result = StepResult(step=step.id, arch=arch, outcome=Outcome.INFRA_ERROR, reason="not run",
                        device_arch=facts.gpu.arch if facts.gpu else None)
    result.reproduce = reproduce_command(step.id, arch, runner.name)
    workdir = f"{runner.work_root().rstrip('/')}/{run.run_id}/{step.id}"
    return StepContext(step=step, arch=arch, workdir=workdir, result=result)


def reproduce_command(step: str, arch: str, backend: str) -> str:
    return f"invoke repro {step} --arch {arch} --backend {backend}"


# --- stages ------------------------------------------------------------------------------------------
def _compile_all(config, request, runner, contexts, facts, console) -> None:
    jobs = compile_jobs(config, request, len(contexts))
    with console.progress("compiling", total=len(contexts)) as advance:
        if jobs == 1:
            for ctx in contexts:
                _guard(ctx, lambda ctx=ctx: _copy_in_and_compile(config, runner, ctx, facts))
                advance(ctx)
            return
        # not a `with` block: on Ctrl-C it would wait for every compile before the run is marked
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = {pool.submit(_guard, ctx, lambda ctx=ctx: _copy_in_and_compile(config, runner, ctx, facts)): ctx
                       for ctx in contexts}
            for future in concurrent.futures.as_completed(futures):
                future.result()
                advance(futures[future])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


PATCHED_CUTLASS = "cutlass-patched"


def source_files(manifest_root, step: Step) -> dict[str, bytes]:
    """The step's .cu file, repros/common/ and the step's CUTLASS patches, as copied into the runner."""
    files = {step.file: (manifest_root / step.file).read_bytes()}
    for patch in step.patches:
        files[f"patches/{patch}"] = (manifest_root / "patches" / patch).read_bytes()
    common = manifest_root / "common"
    if common.is_dir():
        for path in sorted(common.rglob("*")):
            if path.is_file():
                files[f"common/{path.relative_to(common).as_posix()}"] = path.read_bytes()
    return files


def compile_argv(config: Config, step: Step, arch: str, flashinfer: str, cuda_home: str | None) -> list[str]:
    cuda_home = cuda_home or "/usr/local/cuda"
    fill = lambda s: s.format(flashinfer=flashinfer, cuda_home=cuda_home)  # noqa: E731
    argv = [config.compile.nvcc, *config.compile.flags, f"-arch={arch}", "-I", "common"]
    if step.patches:  # the patched copy shadows the container's CUTLASS
        argv += ["-I", f"{PATCHED_CUTLASS}/include"]
    for include in config.compile.include_dirs:
        argv += ["-I", fill(include)]
    argv += ["-o", step.binary, step.file, *(fill(flag) for flag in config.compile.link)]
    return argv


def _copy_in_and_compile(config, runner, ctx: StepContext, facts: Facts) -> None:
    ctx.files_in = source_files(config.repros_dir, ctx.step)
    runner.put_files(ctx.workdir, ctx.files_in)
    if ctx.step.patches and not _apply_patches(runner, ctx):
        return
    argv = compile_argv(config, ctx.step, ctx.arch, runner.flashinfer_root(), facts.cuda_home)
    ctx.compiled = runner.exec(argv, workdir=ctx.workdir, timeout_s=config.compile.timeout_s)
    ctx.result.compile_seconds = round(ctx.compiled.seconds, 3)
    ctx.logs["compile.log"] = f"$ {shlex.join(argv)}\n{ctx.compiled.output}"
    failed = classify_compile(ctx.compiled)
    if failed is not None:
        _decide(ctx, failed)


def _apply_patches(runner, ctx: StepContext) -> bool:
    """Copy the runner's CUTLASS headers into the step's directory and patch the copy (never the original)."""
    cutlass = f"{runner.flashinfer_root()}/3rdparty/cutlass/include"
    script = (f'set -e; rm -rf {PATCHED_CUTLASS}; mkdir -p {PATCHED_CUTLASS}; cp -r "$1" {PATCHED_CUTLASS}/include; '
              f'shift; for p in "$@"; do echo "applying $p"; patch -p1 --forward --batch -d {PATCHED_CUTLASS} < "$p"; done')
    argv = ["bash", "-c", script, "apply-patches", cutlass, *(f"patches/{p}" for p in ctx.step.patches)]
    applied = runner.exec(argv, workdir=ctx.workdir, timeout_s=300)
    ctx.logs["patch.log"] = applied.output
    ctx.result.patches = [{"name": p, "sha256": hashlib.sha256(ctx.files_in[f"patches/{p}"]).hexdigest()}
                          for p in ctx.step.patches]
    if applied.exit_code != 0:
        failing = next((line for line in reversed(applied.output.splitlines()) if line.startswith("applying ")), "")
        _decide(ctx, Classification(Outcome.COMPILE_ERROR, one_line(
            f"CUTLASS patch does not apply ({failing.removeprefix('applying ') or 'patch'}): "
            f"{applied.output.strip().splitlines()[-1] if applied.output.strip() else 'no output'}")))
        return False
    return True


def _check_and_run(config, request, runner, ctx: StepContext, facts: Facts) -> None:
    skip_reason = None
    if request.compile_only:
        skip_reason = "compile only (--compile-only)"
    elif facts.gpu is None:
        skip_reason = "no GPU"
    else:
        images = binary_images(runner, ctx)
        major, minor = facts.gpu.cc
        if not images.runnable_on(major, minor):
            skip_reason = f"no image for {facts.gpu.arch} (binary has {images.describe()})"
    if skip_reason:
        # host-side records (config, preflight, layout dumps) are still produced, with no CUDA call
        preflight = runner.exec([f"./{ctx.step.binary}", PREFLIGHT_FLAG], workdir=ctx.workdir,
                                timeout_s=config.run.timeout_s)
        ctx.logs["run.log"] = f"$ ./{ctx.step.binary} {PREFLIGHT_FLAG}\n{preflight.output}"
        classified = classify_run(preflight)
        note = "" if preflight.exit_code == 0 else f"; preflight-only run: {classified.outcome.value}: {classified.reason}"
        _decide(ctx, Classification(Outcome.SKIPPED, skip_reason + note, classified.events))
        return
    ran = runner.exec([f"./{ctx.step.binary}"], workdir=ctx.workdir, timeout_s=config.run.timeout_s)
    ctx.result.run_seconds = round(ran.seconds, 3)
    ctx.result.exit_code = ran.exit_code
    ctx.result.signal = ran.signal
    ctx.logs["run.log"] = f"$ ./{ctx.step.binary}\n{ran.output}"
    _decide(ctx, classify_run(ran))


def binary_images(runner, ctx: StepContext) -> BinaryImages:
    listed = runner.exec(["cuobjdump", "--list-elf", "--list-ptx", ctx.step.binary], workdir=ctx.workdir,
                         timeout_s=120)
    ctx.logs["cuobjdump.log"] = listed.output
    images = parse_cuobjdump(listed.output)
    if listed.exit_code != 0 and not images.host_only:
        raise InfraError(f"cuobjdump failed on {ctx.step.binary}: {one_line(listed.output, 160)}")
    return images


def _decide(ctx: StepContext, classification: Classification) -> None:
    ctx.result.outcome = classification.outcome
    ctx.result.reason = classification.reason
    ctx.result.events = classification.events
    ctx.done = True


def _guard(ctx: StepContext, stage) -> None:
    try:
        stage()
    except (KeyboardInterrupt, InterruptedRun):
        raise
    except Exception as exc:
        _decide(ctx, outcome_from_exception(exc))


def outcome_from_exception(exc: BaseException) -> Classification:
    """The one place an exception becomes an outcome: infra_error, with the error itself as evidence."""
    if isinstance(exc, GpuReproError):
        return Classification(Outcome.INFRA_ERROR, exc.one_line())
    return Classification(Outcome.INFRA_ERROR, one_line(f"{type(exc).__name__}: {exc}"))


def judge_step(step: Step, arch: str, result: StepResult, facts: Facts | None) -> None:
    """Attach the manifest's expectation and the verdict to a finished result."""
    compile_expect = step.compile.get(arch, "unknown")
    compile_key = f"compile.{arch}"
    compiled = result.outcome not in (Outcome.COMPILE_ERROR,) and not (
        result.outcome is Outcome.TIMEOUT and result.run_seconds is None)
    if result.outcome is Outcome.INFRA_ERROR:
        result.expected, result.expected_key, result.verdict = None, None, Verdict.INFRA
        return
    if not compiled:
        expected = {"ok": "compiles", "compile_error": "compile_error"}.get(compile_expect, "unknown")
        result.expected, result.expected_key = expected, compile_key
        result.verdict = judge(result.outcome, expected)
        return
    if compile_expect == "compile_error":
        result.expected, result.expected_key, result.verdict = "compile_error", compile_key, Verdict.DEPARTED
        result.reason = f"compiled, but the manifest expects compile_error; {result.reason}"
        return
    device = facts.gpu.arch if facts and facts.gpu else device_arch_of(arch)
    result.expected_key = f"expect.{device}"
    result.expected = step.expect.get(device, "unknown")
    result.verdict = judge(result.outcome, result.expected)


def _finish_step(runner, run: RunDirectory, ctx: StepContext, manifest: Manifest, facts, console) -> None:
    result = ctx.result
    judge_step(ctx.step, ctx.arch, result, facts)
    files = dict(ctx.files_in)
    try:
        if ctx.step.patches:  # the patched headers are reproducible from the patch; keep only that
            runner.exec(["rm", "-rf", PATCHED_CUTLASS], workdir=ctx.workdir, timeout_s=120)
        files.update(runner.get_files(ctx.workdir))  # every artifact the step left, the binary included
    except GpuReproError as exc:
        result.reason += f" (artifacts not copied out: {exc.one_line()})"
    finally:
        try:
            runner.remove_dir(ctx.workdir)
        except GpuReproError:
            pass
    for name, text in ctx.logs.items():
        files[name] = text.encode()
    layouts = [e for e in result.events if e.get("event") == "layout"]
    if layouts:
        files["layout.json"] = (json.dumps(layouts, indent=2) + "\n").encode()
    log = ctx.logs.get("run.log") or ctx.logs.get("compile.log") or ""
    result.log_tail = log[-LOG_TAIL_CHARS:]
    files["result.json"] = (json.dumps(result.to_json(), indent=2) + "\n").encode()
    run.write_step_files(ctx.step.id, files)
    console.step_done(result)


# --- the record -------------------------------------------------------------------------------------
def _initial_record(config, request, run, runner) -> dict:
    return run_record_header(config, run, runner, request.argv,
                             {"steps": request.steps, "all": request.all, "arch": request.arch,
                              "backend": runner.name, "compile_only": request.compile_only})


def run_record_header(config, run, runner, argv, request_record: dict, *, kind: str | None = None) -> dict:
    """run.json as a run starts (repro steps and kernels.test alike): who, where, what, `interrupted` until done."""
    record = {"run_id": run.run_id}
    if kind:
        record["kind"] = kind
    record.update({
        "status": STATUS_INTERRUPTED,  # until the run ends: a killed run stays marked
        "tool": {"name": "gpurepro", "version": __version__},
        "started_at": now_utc().isoformat(),
        "finished_at": None,
        "command": list(argv),
        "request": request_record,
        "git": git_state(config.root),
        "host": host_facts(),
        "backend": runner.name,
        "config": str(config.path),
        "environment": {},
        "env_vars": captured_environment(),  # the tool's environment, secret-looking values redacted
        "steps": [],
    })
    return record


def _environment(facts: Facts) -> dict:
    env = dict(facts.values)
    if facts.gpu:
        env.update(gpu_name=facts.gpu.name, gpu_compute_capability=facts.gpu.compute_capability,
                   gpu_arch=facts.gpu.arch, driver_version=facts.gpu.driver)
    else:
        env.update(gpu_name=None, gpu_compute_capability=None, gpu_arch=None)
    return env


def _record_run(config, run: RunDirectory, record: dict, results: list[StepResult], status: str) -> None:
    record["status"] = status
    record["finished_at"] = now_utc().isoformat()
    record["steps"] = [{"step": r.step, "arch": r.arch, "outcome": r.outcome.value, "reason": r.reason,
                        "expected": r.expected, "verdict": r.verdict.value, "patches": r.patches} for r in results]
    record["patches"] = sorted({(p["name"], p["sha256"]) for r in results for p in r.patches})
    record["patches"] = [{"name": name, "sha256": sha} for name, sha in record["patches"]]
    record["exit_code"] = exit_code_for(results) if status == STATUS_COMPLETE else None
    env = record.get("environment") or {}
    properties = {k: v for k, v in {
        "run_id": run.run_id, "backend": record["backend"], "status": status,
        "git_commit": (record["git"] or {}).get("commit"), "git_dirty": (record["git"] or {}).get("dirty"),
        "tool_version": __version__, **{k: env.get(k) for k in (
            "image", "image_id", "image_digest", "nvcc_version", "cutlass_version", "flashinfer_version",
            "gpu_name", "gpu_compute_capability", "driver_version")},
    }.items() if v not in (None, "")}
    suite = build_suite(f"repros@{record['host']['hostname']}", results, timestamp=record["started_at"][:19],
                        hostname=record["host"]["hostname"], properties=properties)
    write_suite(suite, run.path / "junit.xml")
    atomic_write(run.path / "summary.md", render_summary(record, results))
    write_json(run.path / "run.json", record)


def _write_html(run: RunDirectory, manifest: Manifest) -> None:
    """index.html beside run.json; a failure to render never costs the run its record."""
    from .html_report import write_report

    try:
        write_report(run.path, manifest=manifest)
    except Exception as exc:  # noqa: BLE001 - `invoke report` can rewrite it later
        print(f"gpurepro: index.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)


