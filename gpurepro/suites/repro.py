"""The repro suite: each step through named stages, in one place.

    select steps -> [open_run: directory, lock, record, runner start + probe]
      per step, compiles in parallel:   copy in -> patch -> compile
      per step, one at a time:          check arch -> run (classify)
      per step, as soon as it is done:  copy out -> judge -> write steps/<step>/
    -> [finish: junit.xml, summary.md, index.html, run.json]

A stage that decides the step's outcome ends its stages; any exception inside a stage becomes an outcome
with evidence in `outcome_from_exception`, never a traceback. An error that means the runner itself is gone
(`fatal`) ends the whole run.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shlex
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..archs import BinaryImages, parse_cuobjdump
from ..cache import (HIT, MISS, OFF, ActionCache, Entry as CacheEntry, StepHistory, cache_record, compile_key,
                     docker_toolchain, header_tree_hash, host_toolchain, parse_peak_rss, peak_rss_wrapper)
from ..classify import Classification, ExecResult, classify_compile, classify_run, one_line
from ..config import Config
from ..environment import invoked_command, memory_gb
from ..errors import GpuReproError, InfraError, InterruptedRun, UsageError
from ..manifest import Manifest, Step, device_arch_of, load_manifest
from ..outcomes import Outcome, StepResult, Verdict, exit_code_for, judge
from ..run import STATUS_FAILED, STATUS_INTERRUPTED, ActiveRun, RunDirectory, StepSummary, atomic_write, open_run
from ..render.console import StepLine
from ..run.record import KIND_REPRO, VALIDATE_ENV, validate
from ..runners import Facts, Runner, make_runner
from ..runners.base import Command

LOG_TAIL_CHARS = 8000
PREFLIGHT_FLAG = "--preflight-only"
PATCHED_CUTLASS = "cutlass-patched"
KIND = KIND_REPRO


@dataclass
class RunRequest:
    steps: list[str] = field(default_factory=list)
    all: bool = False
    arch: str | None = None
    backend: str = "auto"
    compile_only: bool = False
    jobs: int | None = None
    no_cache: bool = False  # compile every step; the cache is written, not read
    argv: list[str] = field(default_factory=invoked_command)
    prefer_arch: str | None = None  # compile for this where the step lists it, else the step's first target
    toolchains: list[str] | None = None  # named toolchains (ci/toolchains.yaml) to run every step with
    force_arch: bool = False  # compile for --arch even where a step does not list it as a target
    endpoint: str | None = None  # the Docker daemon toolchain lanes use (a nightly target's); None: the default
    recorded_keys: dict | None = None  # a replay: (step, arch) -> the compile key the bundled run recorded

    def to_record(self, backend: str) -> dict:
        return {"steps": self.steps, "all": self.all, "arch": self.arch, "backend": backend,
                "compile_only": self.compile_only, "no_cache": self.no_cache, "toolchains": self.toolchains,
                "force_arch": self.force_arch}


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
    compile_classification: Classification | None = None  # the compile's own end, for the cache entry
    cache_key: str | None = None  # the entry to write once the step's files are out (a miss, or --no-cache)
    hit: bool = False  # the compile came from the cache
    logs: dict[str, str] = field(default_factory=dict)
    stage: str = "queued"
    looked_up: bool = False  # files_in, patches and the cache entry are known (see _prepare_in)
    entry: "CacheEntry | None" = None  # the cache entry to use instead of compiling (a hit)
    env: "Env | None" = None  # its toolchain's runner and facts (one Env per toolchain lane)
    done: bool = False  # outcome decided: the remaining stages are skipped
    finished: bool = False  # copied out and written
    # the step's thread and the run's end (which marks unfinished steps on an interrupt) both decide and
    # finish steps: the first to take `done` / `finished` under this lock owns them
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class MemoryBudget:
    """Compiles reserve the memory they are expected to peak at (last measured, else compile.memory_gb_per_job);
    one that does not fit waits. A single compile larger than the budget still runs, alone."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.used = 0
        self.running = 0
        self.ready = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int):
        with self.ready:
            self.ready.wait_for(lambda: self.running == 0 or self.used + nbytes <= self.total)
            self.used += nbytes
            self.running += 1
        try:
            yield
        finally:
            with self.ready:
                self.used -= nbytes
                self.running -= 1
                self.ready.notify_all()


@dataclass
class Env:
    """What every stage may use."""

    config: Config
    request: RunRequest
    runner: Runner
    facts: Facts
    console: object
    interrupted: threading.Event = field(default_factory=threading.Event)
    cache: ActionCache | None = None  # None: cache.enabled is false
    history: StepHistory | None = None
    memory: MemoryBudget | None = None
    toolchain: dict | None = None  # the cache key's toolchain part; None: nothing to key on, compile every time
    compile_slots: threading.BoundedSemaphore | None = None  # compilers running at once (--jobs)
    lane: "Lane | None" = None  # the named toolchain this Env compiles with (a matrix run), else None


Stage = Callable[[Env, StepContext], None]


# --- selection -------------------------------------------------------------------------------------
def select_steps(manifest: Manifest, request: RunRequest, log=None) -> list[Step]:
    """The steps asked for; with --arch, only those that list it as a compile target (unless --force-arch)."""
    if request.all:
        steps = list(manifest.steps.values())
    elif not request.steps:
        raise UsageError("no step given", hint="name one or more steps, or `all`; `invoke repro.list` shows them")
    else:
        steps = manifest.select(request.steps)
    if not request.arch or request.force_arch:
        return steps
    other = [s for s in steps if s.targets and request.arch not in s.targets]
    if other and not request.all:
        names = ", ".join(f"{s.id} ({' '.join(s.targets)})" for s in other[:4])
        raise UsageError(f"--arch {request.arch} is not a compile target of {names}",
                         hint="add --force-arch to compile it anyway")
    if other and log is not None:
        log(f"left out (no {request.arch} target): {', '.join(s.id for s in other)}")
    return [s for s in steps if s not in other]


def target_arch(step: Step, request: RunRequest, config: Config) -> str:
    if request.arch:
        return request.arch
    if request.prefer_arch and request.prefer_arch in step.targets:
        return request.prefer_arch
    return step.targets[0] if step.targets else config.compile.default_arch


def compile_jobs(config: Config, request: RunRequest, count: int) -> int:
    """Threads for the compile stages: --jobs, else compile.jobs, else one per core. Memory is not divided up
    front: each compile reserves what it is expected to use from the MemoryBudget (cache hits use none)."""
    wanted = request.jobs or config.compile.jobs or (os.cpu_count() or 1)
    return max(1, min(wanted, count))


def reproduce_command(step: str, arch: str, backend: str, compile_only: bool = False,
                      toolchain: str | None = None, force_arch: bool = False) -> str:
    return (f"invoke repro {step} --arch {arch} --backend {backend}" + (" --compile-only" if compile_only else "")
            + (f" --toolchain {toolchain}" if toolchain else "") + (" --force-arch" if force_arch else ""))


# --- the suite ---------------------------------------------------------------------------------------
def execute(config: Config, request: RunRequest, *, console=None, runner: Runner | None = None) -> RunOutcome:
    from ..render.console import Console

    console = console or Console()
    manifest = load_manifest(config.manifest)
    steps = select_steps(manifest, request, console.info)  # bad input: exit 2 before anything is created
    lanes = plan_lanes(config, request, log=console.info) if request.toolchains else [Lane()]
    usable = [lane for lane in lanes if lane.equivalent_to is None and lane.problem is None]
    if not usable:
        raise InfraError(f"no toolchain can run here: {lanes[0].problem}")
    if runner is None:
        runner = usable[0].make_runner(config, request, console.info)
    contexts: list[StepContext] = []

    def finish(run: ActiveRun) -> None:
        if not contexts:  # the runner never started (no nvcc, no daemon, Ctrl-C): each step still gets its <error>
            contexts.extend(StepContext(step=s, arch=a, workdir="", result=StepResult(
                step=s.id, arch=a, outcome=Outcome.INFRA_ERROR, reason="not run"))
                for s in steps for a in [target_arch(s, request, config)])
        _finish_run(run, contexts, manifest)

    with open_run(config, kind=KIND, request=request.to_record(runner.name), runner=runner,
                  argv=request.argv, console=console, finish=finish) as run:
        shared = dict(memory=MemoryBudget(int(memory_gb() * 0.85 * 2**30)))
        if config.cache.enabled:
            shared.update(cache=ActionCache(config.cache.dir, config.cache.max_bytes),
                          history=StepHistory(config.cache.dir))
        run.record.toolchains = [lane.toolchain.record() for lane in lanes if lane.toolchain is not None]
        envs = []
        for lane in lanes:
            if lane.equivalent_to is not None:
                continue  # its results are its representative's (see _finish_run)
            if lane is usable[0]:
                lane_runner, facts = runner, run.facts
            elif lane.problem is not None:  # cannot start here: its cells say why, nothing runs
                lane_runner, facts = runner, run.facts
            else:
                lane_runner = lane.make_runner(config, request, console.info)
                facts = run.attach(lane_runner, nvcc=config.compile.nvcc)
            env = Env(config, request, lane_runner, facts, console, lane=lane, **shared)
            env.interrupted = envs[0].interrupted if envs else env.interrupted  # one interrupt for every lane
            env.toolchain = toolchain_identity(lane_runner, facts) if env.cache is not None else None
            if lane.problem is None:
                lane.check_facts(facts)
            envs.append(env)
        run.state["env"] = envs[0]
        run.state["lanes"] = lanes
        contexts.extend(_new_context(env, run, step) for env in envs for step in steps)
        with console.steps([StepLine(ctx.result.step, _label(ctx), expected=_expected_seconds(ctx.env, ctx))
                            for ctx in contexts]):
            # with no device in use (compile-only, or no GPU anywhere) each step goes start to finish in the pool;
            # a GPU runs one step at a time, after the compiles
            on_device = not request.compile_only and any(env.facts.gpu is not None for env in envs)
            _compile_all(envs[0], run, contexts, manifest, through=not on_device)
            for ctx in contexts:
                _run_stages(ctx.env, ctx, DEVICE_STAGES)
                _finish_step(ctx.env, run, ctx, manifest)
    results = _with_equivalents([ctx.result for ctx in contexts], lanes)
    outcome = RunOutcome(run=run.directory, results=results, status=run.status, exit_code=exit_code_for(
        r.verdict for r in results))
    console.results(results, run.directory)
    return outcome


def _label(ctx: StepContext) -> str:
    return ctx.arch if ctx.result.toolchain is None else f"{ctx.arch},{ctx.result.toolchain}"


# --- toolchain lanes -------------------------------------------------------------------------------------
@dataclass
class Lane:
    """One toolchain of a matrix run: its image (docker) or header tree (host), and whether it only repeats
    another (equivalent: same headers and compiler, so not run twice). Lane() is the configured toolchain."""

    toolchain: object = None  # gpurepro.toolchains.Toolchain
    equivalent_to: str | None = None
    problem: str | None = None  # why this lane cannot compile here (an infra_error for each of its cells)

    @property
    def name(self) -> str | None:
        return getattr(self.toolchain, "name", None)

    def config_for(self, config: Config) -> Config:
        if self.toolchain is None:
            return config
        docker = dataclasses.replace(config.docker, image=self.toolchain.image(config.docker.images["toolchain"]),
                                     container=f"{config.docker.container}-{self.name}")
        host = dataclasses.replace(config.host, flashinfer=str(_toolchain_headers_dir(config, self.toolchain)))
        return dataclasses.replace(config, docker=docker, host=host)

    def make_runner(self, config: Config, request: RunRequest, log) -> Runner:
        return make_runner(self.config_for(config), request.backend, log=log, endpoint=request.endpoint)

    def check_facts(self, facts: Facts) -> None:
        """The toolchain the runner really has: on the host, nvcc is the host's own, whatever the lane says."""
        if self.toolchain is None:
            return
        found = facts.values.get("nvcc_version") or ""
        wanted = self.toolchain.nvcc_version
        if wanted and found and wanted.split(".")[:2] != _release(found).split(".")[:2]:
            self.problem = (f"toolchain {self.name} needs nvcc {wanted}; the runner has {_release(found)} "
                            f"(the host backend uses the host's nvcc; use --backend docker)")


def _release(nvcc_version: str) -> str:
    found = re.search(r"V(\d+\.\d+\.\d+)", nvcc_version) or re.search(r"(\d+\.\d+)", nvcc_version)
    return found.group(1) if found else nvcc_version


def _toolchain_headers_dir(config: Config, toolchain) -> pathlib.Path:
    return pathlib.Path(config.host.flashinfer).expanduser().parent / "toolchains" / toolchain.name


def plan_lanes(config: Config, request: RunRequest, *, log) -> list[Lane]:
    """The toolchains asked for, each with what it needs here: its image built (docker) or its headers laid out
    (host), offline from the pinned wheels. Equivalent toolchains are run once."""
    from ..toolchains import equivalence_groups, load_toolchains, toolchains_file

    chosen = load_toolchains(toolchains_file(config)).select(request.toolchains)
    from ..images import download_toolchain_wheels, local_wheel_dirs, pool_dir

    for toolchain in chosen:  # equivalence is decided from the wheels' contents: have them (hash-checked, offline
        if toolchain.offline:  # when present)
            download_toolchain_wheels(config, toolchain, log=log)
    lanes = []
    for group in equivalence_groups(chosen, [pool_dir(config), *local_wheel_dirs()]):
        first, *rest = group
        lanes.append(Lane(first))
        lanes += [Lane(other, equivalent_to=first.name) for other in rest]
    order = {t.name: i for i, t in enumerate(chosen)}
    lanes.sort(key=lambda lane: order[lane.name])
    for lane in lanes:
        if lane.equivalent_to is None:
            try:
                _prepare_lane(config, request, lane, log)
            except GpuReproError as exc:  # e.g. a CUDA 12.9 toolchain that needs a registry: its cells say so
                lane.problem = f"toolchain {lane.name} cannot be built here: {exc.one_line()}"
                log(lane.problem)
    return lanes


def _prepare_lane(config: Config, request: RunRequest, lane: Lane, log) -> None:
    from ..images import build_image, image_exists, layout_headers

    if request.backend == "host":
        target = _toolchain_headers_dir(config, lane.toolchain)
        if not (target / "3rdparty" / "cutlass" / "include" / "cutlass" / "version.h").is_file():
            log(f"toolchain {lane.name}: laying out its headers in {target}")
            layout_headers(config, lane.toolchain, target, log=log)
        return
    from ..runners.docker import connect

    image = lane.toolchain.image(config.docker.images["toolchain"])
    client = connect(request.endpoint)
    try:
        if not image_exists(client, image):
            log(f"toolchain {lane.name}: building {image} (offline, from its pinned wheels)")
            build_image(client, config, "toolchain", toolchain=lane.toolchain, tag_latest=False, log=log)
    finally:
        client.close()


def _with_equivalents(results: list[StepResult], lanes: list[Lane]) -> list[StepResult]:
    """An equivalent toolchain's cells: its representative's results, saying so (never run twice)."""
    out = list(results)
    for lane in lanes:
        if lane.equivalent_to is None:
            continue
        for r in results:
            if r.toolchain == lane.equivalent_to:
                out.append(dataclasses.replace(r, toolchain=lane.name, cache=None,
                                               reason=f"same as {lane.equivalent_to} (equivalent toolchain): {r.reason}"))
    return out


NOTES_SECONDS_RE = re.compile(r"[Cc]ompiles?\b[^.;]*?~?(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?\s*s\b|"
                              r"\b(?:ok|compile_error) in (\d+(?:\.\d+)?) s\b")


def expected_from_notes(notes: str) -> float | None:
    """A compile time the manifest's notes give ("Compile ~92-129 s", "ok in 168 s"): the upper figure."""
    found = NOTES_SECONDS_RE.search(notes or "")
    if not found:
        return None
    low, high, single = found.groups()
    return float(high or low or single)


def _expected_seconds(env: Env, ctx: StepContext) -> float | None:
    measured = env.history.get(ctx.step.id, ctx.arch).get("seconds") if env.history else None
    return measured or expected_from_notes(ctx.step.notes)


def _new_context(env: Env, run: ActiveRun, step: Step) -> StepContext:
    arch = target_arch(step, env.request, env.config)
    toolchain = env.lane.name if env.lane else None
    result = StepResult(step=step.id, arch=arch, outcome=Outcome.INFRA_ERROR, reason="not run",
                        device_arch=env.facts.gpu.arch if env.facts.gpu else None, toolchain=toolchain)
    result.reproduce = reproduce_command(step.id, arch, env.runner.name, env.request.compile_only, toolchain,
                                         env.request.force_arch and bool(step.targets) and arch not in step.targets)
    work_root = f"{env.runner.work_root().rstrip('/')}/{run.run_id}"
    ctx = StepContext(step=step, arch=arch, workdir=f"{work_root}/{result.dirname}", result=result, env=env)
    if env.lane and env.lane.problem:
        ctx.result.reason, ctx.done = env.lane.problem, True
    return ctx


IO_WORKERS = 8  # steps in flight at once: most of a cache hit's time is waiting on the Docker API


def _compile_all(env: Env, run: ActiveRun, contexts: list[StepContext], manifest: Manifest, *,
                 through: bool = False) -> None:
    """Every step's compile stages in a pool (and, `through`, the rest of the step too). Compilers themselves
    run at most `jobs` at a time (and within the memory budget); the pool is wider so that cache hits, copies
    and preflight runs overlap while compiles take the cores."""
    jobs = compile_jobs(env.config, env.request, len(contexts))
    slots = threading.BoundedSemaphore(jobs)
    for ctx in contexts:
        ctx.env.compile_slots = slots

    def one(ctx: StepContext) -> None:
        _run_stages(ctx.env, ctx, COMPILE_STAGES)
        if through:
            _run_stages(ctx.env, ctx, DEVICE_STAGES)
            _finish_step(ctx.env, run, ctx, manifest)

    batches = _hit_batches(contexts) if through else {}
    rest = [ctx for ctx in contexts if not any(ctx in batch for batch in batches.values())]
    workers = min(len(rest), max(jobs, IO_WORKERS))
    if workers <= 1:
        for batch in batches.values():
            _run_hit_batch(batch[0].env, run, batch, manifest)
        for ctx in rest:
            one(ctx)
        return
    # not a `with` block: on Ctrl-C it would wait for every compile before the run is marked
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step")
    try:
        futures = [pool.submit(one, ctx) for ctx in rest]  # the compiles start first: they take longest
        for batch in batches.values():
            _run_hit_batch(batch[0].env, run, batch, manifest)
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except (KeyboardInterrupt, InterruptedRun):
        env.interrupted.set()  # compiles still running end as `interrupted`, not as their killed selves
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


HITS_DIR = "hits"  # under the run's work directory: the batched cache hits, copied out in one piece


def _hit_batches(contexts: list[StepContext]) -> dict[int, list[StepContext]]:
    """Cache hits that need no device, by runner (a toolchain matrix has one per lane): each group goes through
    its runner in one copy in, one exec for all the preflight runs and one copy out, where a step on its own
    costs three round trips (see _run_hit_batch). A lookup that fails is left to the step's own stages."""
    batches: dict[int, list[StepContext]] = {}
    for ctx in contexts:
        env = ctx.env
        if ctx.done or env is None or env.cache is None or not (env.request.compile_only or env.facts.gpu is None):
            continue
        try:
            _prepare_in(env, ctx)
        except Exception:  # noqa: BLE001 - copy_in meets it again and makes it the step's outcome
            continue
        if ctx.entry is not None:
            batches.setdefault(id(env), []).append(ctx)
    return batches


def _run_hit_batch(env: Env, run: ActiveRun, batch: list[StepContext], manifest: Manifest) -> None:
    """Cache hits with no device to wait for: the stages each would go through alone (copy in, the cached
    compile, the `--preflight-only` run, copy out), each done once for the whole batch."""
    root = f"{env.runner.work_root().rstrip('/')}/{run.run_id}/{HITS_DIR}"
    files: dict[str, bytes] = {}
    executable = set()
    for ctx in batch:
        ctx.workdir = f"{root}/{ctx.result.dirname}"
        ctx.stage = "copying in"
        env.console.stage(ctx.step.id, _label(ctx), "copying in")
        if ctx.entry.binary is not None:  # a cached compile error has nothing to run: nothing goes in
            files.update({f"{ctx.result.dirname}/{name}": data for name, data in ctx.files_in.items()})
            files[f"{ctx.result.dirname}/{ctx.step.binary}"] = ctx.entry.binary
            executable.add(f"{ctx.result.dirname}/{ctx.step.binary}")
    collected: dict[str, dict[str, bytes]] = {ctx.result.dirname: {} for ctx in batch}
    fatal = None
    try:
        if files:
            env.runner.put_files(root, files, executable=frozenset(executable))
        for ctx in batch:
            _from_cache(env, ctx, ctx.entry)
        runnable = [ctx for ctx in batch if not ctx.done]
        for ctx in runnable:
            ctx.stage = "checking arch"
            env.console.stage(ctx.step.id, _label(ctx), "checking arch")
        skip_reason = None if env.request.compile_only else "no GPU"
        if runnable:
            # the binaries stay out of the copy back: the cache entry holds the same bytes
            done = env.runner.exec_many([Command((f"./{ctx.step.binary}", PREFLIGHT_FLAG), ctx.workdir,
                                                 env.config.run.timeout_s) for ctx in runnable],
                                        collect=root, drop=frozenset(executable))
            for ctx, preflight in zip(runnable, done.results):
                _judge_preflight(env, ctx, preflight, skip_reason)
            for name, data in (done.files or {}).items():
                dirname, _, rest = name.partition("/")
                if dirname in collected and rest:
                    collected[dirname][rest] = data
            for ctx in runnable:
                collected[ctx.result.dirname][ctx.step.binary] = ctx.entry.binary
    except (KeyboardInterrupt, InterruptedRun):
        env.interrupted.set()
        raise
    except Exception as exc:
        for ctx in batch:
            if not ctx.done:  # the cached compile errors are decided already and had nothing to copy
                _decide(env, ctx, outcome_from_exception(exc))
        if getattr(exc, "fatal", False):  # the runner is gone: no other step can run either
            fatal = exc
    for ctx in batch:
        _finish_step(env, run, ctx, manifest, collected=collected[ctx.result.dirname])
    if fatal is not None:
        raise fatal


def _run_stages(env: Env, ctx: StepContext, stages: tuple[tuple[str, Stage], ...]) -> None:
    try:
        _stages(env, ctx, stages)
    finally:
        if stages is COMPILE_STAGES:  # between its compile and its turn on the device: not busy, no heartbeat
            env.console.stage(ctx.step.id, _label(ctx), f"waiting ({ctx.result.outcome.value})" if ctx.done
                              else "compiled, waiting for the device")


def _stages(env: Env, ctx: StepContext, stages: tuple[tuple[str, Stage], ...]) -> None:
    for name, stage in stages:
        if ctx.done:
            return
        ctx.stage = name
        quiet = name == "compiling" or (name == "patching" and (ctx.hit or not ctx.step.patches))
        if not quiet:  # the compile stage says itself whether it is a cache hit
            env.console.stage(ctx.step.id, _label(ctx), name)
        try:
            stage(env, ctx)
        except (KeyboardInterrupt, InterruptedRun):
            env.interrupted.set()
            raise
        except Exception as exc:
            _decide(env, ctx, outcome_from_exception(exc))
            if getattr(exc, "fatal", False):  # the runner is gone: no other step can run either
                raise


def outcome_from_exception(exc: BaseException) -> Classification:
    """The one place an exception becomes an outcome: infra_error, with the error itself as evidence."""
    if isinstance(exc, GpuReproError):
        return Classification(Outcome.INFRA_ERROR, exc.one_line())
    return Classification(Outcome.INFRA_ERROR, one_line(f"{type(exc).__name__}: {exc}"))


def _decide(env: Env, ctx: StepContext, classification: Classification) -> None:
    """The step's outcome, once: a step already decided keeps its outcome (a compile killed by an interrupt
    returns after the run's end may have marked the step `interrupted`)."""
    with ctx.lock:
        if ctx.done:
            return
        if env.interrupted.is_set():  # killed by the interrupt: its end says nothing about the step
            classification = Classification(Outcome.INTERRUPTED, f"interrupted during {ctx.stage}")
        ctx.result.outcome = classification.outcome
        ctx.result.reason = classification.reason
        ctx.result.events = classification.events
        ctx.done = True


# --- compile stages ------------------------------------------------------------------------------------
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


def _prepare_in(env: Env, ctx: StepContext) -> None:
    """What goes in (the step's files, its patches' digests) and whether the cache holds its compile."""
    if ctx.looked_up:
        return
    ctx.files_in = source_files(env.config.repros_dir, ctx.step)
    ctx.result.patches = [{"name": p, "sha256": hashlib.sha256(ctx.files_in[f"patches/{p}"]).hexdigest()}
                          for p in ctx.step.patches]
    ctx.entry = _look_up(env, ctx)
    ctx.looked_up = True


def copy_in(env: Env, ctx: StepContext) -> None:
    """The step's files into the runner; on a cache hit the cached binary goes in with them, in the same copy,
    and the patch and compile stages have nothing left to do."""
    _prepare_in(env, ctx)
    entry = ctx.entry
    if entry is None or entry.binary is None:
        env.runner.put_files(ctx.workdir, ctx.files_in)
    else:
        env.runner.put_files(ctx.workdir, {**ctx.files_in, ctx.step.binary: entry.binary},
                             executable=frozenset({ctx.step.binary}))
    if entry is not None:
        _from_cache(env, ctx, entry)


def apply_patches(env: Env, ctx: StepContext) -> None:
    """Copy the runner's CUTLASS headers into the step's directory and patch the copy (never the original)."""
    if not ctx.step.patches or ctx.hit:
        return
    if env.lane and env.lane.toolchain is not None:
        from ..toolchains import patch_applies

        for patch in ctx.step.patches:
            verdict = patch_applies(patch, env.lane.toolchain.cutlass_version, env.config.repros_dir / "patches")
            if verdict is not True:
                raise InfraError(verdict)  # this cell cannot be built as the step means: no verdict on it
    cutlass = f"{env.runner.flashinfer_root()}/3rdparty/cutlass/include"
    script = (f'set -e; rm -rf {PATCHED_CUTLASS}; mkdir -p {PATCHED_CUTLASS}; cp -r "$1" {PATCHED_CUTLASS}/include; '
              f'shift; for p in "$@"; do echo "applying $p"; patch -p1 --forward --batch -d {PATCHED_CUTLASS} < "$p"; done')
    argv = ["bash", "-c", script, "apply-patches", cutlass, *(f"patches/{p}" for p in ctx.step.patches)]
    applied = env.runner.exec(argv, workdir=ctx.workdir, timeout_s=300)
    ctx.logs["patch.log"] = applied.output
    if applied.exit_code != 0:
        failing = next((line for line in reversed(applied.output.splitlines()) if line.startswith("applying ")), "")
        _decide(env, ctx, Classification(Outcome.COMPILE_ERROR, one_line(
            f"CUTLASS patch does not apply ({failing.removeprefix('applying ') or 'patch'}): "
            f"{applied.output.strip().splitlines()[-1] if applied.output.strip() else 'no output'}")))


# the variables of the tool's own environment that reach nvcc on the host backend (in a container, the image's
# environment is part of the image id)
NVCC_ENV_PREFIXES = ("NVCC_",)
NVCC_ENV_NAMES = ("CUDA_HOME", "CUDA_PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "LIBRARY_PATH", "CC",
                  "CXX", "CCBIN")


def toolchain_identity(runner: Runner, facts: Facts) -> dict | None:
    """What decides the compiler's output besides the inputs: the image, or nvcc + host compiler + headers."""
    values = facts.values
    if values.get("image_id"):
        return docker_toolchain(values["image_id"])
    if runner.name == "host" and values.get("nvcc_version"):
        headers = header_tree_hash(pathlib.Path(runner.flashinfer_root()))
        return host_toolchain(values["nvcc_version"], values.get("host_compiler") or "unknown", headers)
    return None  # nothing to key on: compile every time


def nvcc_environment(runner: Runner) -> dict[str, str]:
    if runner.name != "host":
        return {}
    return {k: v for k, v in os.environ.items() if k.startswith(NVCC_ENV_PREFIXES) or k in NVCC_ENV_NAMES}


def _look_up(env: Env, ctx: StepContext):
    """The step's cache key (kept for the entry written after a miss) and its entry, when a run may read one."""
    argv = compile_argv(env.config, ctx.step, ctx.arch, env.runner.flashinfer_root(), env.facts.cuda_home)
    key = None
    if env.cache is not None and env.toolchain is not None:
        key = compile_key(toolchain=env.toolchain, files=ctx.files_in,
                          patches=[p["sha256"] for p in ctx.result.patches], argv=argv,
                          env=nvcc_environment(env.runner), workdir=ctx.workdir)
    ctx.cache_key = key
    ctx.result.cache = cache_record(MISS if key is not None and not env.request.no_cache else OFF, key)
    recorded = (env.request.recorded_keys or {}).get((ctx.step.id, ctx.arch))
    if recorded:  # a replay says, before the step compiles or runs, whether its inputs are the bundled run's
        same = recorded == key
        ctx.result.cache["same_as_recorded"] = same
        env.console.info(f"  {ctx.step.id}[{_label(ctx)}]: compile inputs "
                         + ("the same as the bundled run's" if same else
                            f"differ from the bundled run's (key {str(key)[:12]} here, {recorded[:12]} there)"))
    if key is None or env.request.no_cache:
        return None
    entry = env.cache.get(key)
    if entry is not None and (entry.binary is not None or entry.outcome == Outcome.COMPILE_ERROR.value):
        return entry
    return None


def compile_step(env: Env, ctx: StepContext) -> None:
    """A cache hit ran no compiler (see copy_in); otherwise nvcc, under the peak-RSS wrapper where python3 is."""
    if ctx.hit:
        return
    argv = compile_argv(env.config, ctx.step, ctx.arch, env.runner.flashinfer_root(), env.facts.cuda_home)
    expected = (env.history.get(ctx.step.id, ctx.arch) if env.history else {}) or {}
    need = expected.get("peak_rss_bytes") or int(env.config.compile.memory_gb_per_job * 2**30)
    measured = argv if not env.facts.values.get("python3_path") else peak_rss_wrapper(argv)
    env.console.stage(ctx.step.id, _label(ctx), "waiting for a compile slot")
    with env.compile_slots or contextlib.nullcontext(), \
            env.memory.reserve(int(need * 1.1)) if env.memory else contextlib.nullcontext():
        env.console.stage(ctx.step.id, _label(ctx), "compiling", expected.get("seconds"))
        ran = env.runner.exec(measured, workdir=ctx.workdir, timeout_s=env.config.compile.timeout_s)
    output, rss = parse_peak_rss(ran.output)
    ctx.compiled = dataclasses.replace(ran, argv=argv, output=output)
    ctx.result.compile_seconds = round(ctx.compiled.seconds, 3)
    ctx.result.compile_rss_bytes = rss
    ctx.logs["compile.log"] = f"$ {shlex.join(argv)}\n{ctx.compiled.output}"
    failed = classify_compile(ctx.compiled)
    ctx.compile_classification = failed or Classification(Outcome.COMPILED, "compiled")
    if env.history is not None and not ctx.compiled.timed_out:
        env.history.record(ctx.step.id, ctx.arch, ctx.compiled.seconds, rss)
    if failed is not None:
        _decide(env, ctx, failed)
    _store_compile(env, ctx)


def _from_cache(env: Env, ctx: StepContext, entry) -> None:
    env.console.stage(ctx.step.id, _label(ctx), "compiling: cache hit")
    ctx.hit = True
    ctx.cache_key = None  # nothing to write back
    ctx.result.cache = cache_record(HIT, entry.key)
    ctx.result.compile_seconds = round(entry.compile_seconds, 3)
    ctx.result.compile_rss_bytes = entry.peak_rss_bytes
    ctx.logs["compile.log"] = entry.compile_log
    if entry.binary is None:
        _decide(env, ctx, Classification(Outcome.COMPILE_ERROR, entry.reason, list(entry.events)))


def _store_compile(env: Env, ctx: StepContext) -> None:
    """Right after the compile, before anything runs: a finished compile (a binary, or a compile error) becomes a
    cache entry, so a run interrupted on the device keeps its compiles. Timeouts, infra errors and interrupted
    compiles are never cached."""
    done = ctx.compile_classification
    if env.cache is None or ctx.cache_key is None or done is None or ctx.compiled is None:
        return
    if env.interrupted.is_set() or ctx.compiled.timed_out:
        return
    binary = None
    if done.outcome is Outcome.COMPILED:
        try:
            binary = env.runner.read_file(f"{ctx.workdir}/{ctx.step.binary}")
        except GpuReproError:
            binary = None
        if binary is None:
            return  # the binary did not come out: nothing trustworthy to keep
    entry = CacheEntry(binary=binary, compile_log=ctx.logs.get("compile.log", ""),
                       outcome=Outcome.COMPILE_ERROR.value if binary is None else "ok", reason=done.reason,
                       events=list(done.events), compile_seconds=ctx.compiled.seconds,
                       peak_rss_bytes=ctx.result.compile_rss_bytes,
                       extra={"step": ctx.step.id, "arch": ctx.arch, "binary": ctx.step.binary})
    try:
        env.cache.put(ctx.cache_key, entry, replace=env.request.no_cache)
    except GpuReproError as exc:  # a cache that cannot be written costs the next run a compile, nothing else
        env.console.error(f"gpurepro: compile cache not written: {exc.one_line()}")


COMPILE_STAGES: tuple[tuple[str, Stage], ...] = (("copying in", copy_in), ("patching", apply_patches),
                                                  ("compiling", compile_step))


# --- device stages -------------------------------------------------------------------------------------
def check_arch(env: Env, ctx: StepContext) -> None:
    """Where the device part cannot run, the program still runs `--preflight-only` for its host-side records."""
    facts = env.facts
    if env.request.compile_only:
        return _preflight(env, ctx, None)
    if facts.gpu is None:
        return _preflight(env, ctx, "no GPU")
    images = binary_images(env.runner, ctx)
    major, minor = facts.gpu.cc
    if not images.runnable_on(major, minor):
        _preflight(env, ctx, f"no image for {facts.gpu.arch} (binary has {images.describe()})")


def _preflight(env: Env, ctx: StepContext, skip_reason: str | None) -> None:
    preflight = env.runner.exec([f"./{ctx.step.binary}", PREFLIGHT_FLAG], workdir=ctx.workdir,
                                timeout_s=env.config.run.timeout_s)
    _judge_preflight(env, ctx, preflight, skip_reason)


def _judge_preflight(env: Env, ctx: StepContext, preflight: ExecResult, skip_reason: str | None) -> None:
    ctx.logs["run.log"] = f"$ ./{ctx.step.binary} {PREFLIGHT_FLAG}\n{preflight.output}"
    classified = classify_run(preflight)
    if classified.outcome is Outcome.TIMEOUT:  # a hang is a hang, preflight or not
        ctx.result.run_seconds = round(preflight.seconds, 3)
        return _decide(env, ctx, Classification(Outcome.TIMEOUT, f"preflight-only run: {classified.reason}",
                                                classified.events))
    note = "" if preflight.exit_code == 0 else f"; preflight-only run: {classified.outcome.value}: {classified.reason}"
    if skip_reason is None:  # --compile-only: the compile is what is judged
        return _decide(env, ctx, Classification(Outcome.COMPILED, "compiled (--compile-only: not run)" + note,
                                                classified.events))
    _decide(env, ctx, Classification(Outcome.SKIPPED, skip_reason + note, classified.events))


def binary_images(runner: Runner, ctx: StepContext) -> BinaryImages:
    listed = runner.exec(["cuobjdump", "--list-elf", "--list-ptx", ctx.step.binary], workdir=ctx.workdir,
                         timeout_s=120)
    ctx.logs["cuobjdump.log"] = listed.output
    images = parse_cuobjdump(listed.output)
    if listed.exit_code != 0 and not images.host_only:
        raise InfraError(f"cuobjdump failed on {ctx.step.binary}: {one_line(listed.output, 160)}")
    return images


def run_binary(env: Env, ctx: StepContext) -> None:
    ran = env.runner.exec([f"./{ctx.step.binary}"], workdir=ctx.workdir, timeout_s=env.config.run.timeout_s)
    ctx.result.run_seconds = round(ran.seconds, 3)
    ctx.result.exit_code = ran.exit_code
    ctx.result.signal = ran.signal
    ctx.logs["run.log"] = f"$ ./{ctx.step.binary}\n{ran.output}"
    _decide(env, ctx, classify_run(ran))


DEVICE_STAGES: tuple[tuple[str, Stage], ...] = (("checking arch", check_arch), ("running", run_binary))


# --- judge and write ----------------------------------------------------------------------------------
def judge_step(step: Step, arch: str, result: StepResult, facts: Facts | None) -> None:
    """Attach the manifest's expectation and the verdict to a finished result."""
    compile_expect = step.compile.get(arch, "unknown")
    compile_key = f"compile.{arch}"
    if result.outcome in (Outcome.INFRA_ERROR, Outcome.INTERRUPTED):
        result.expected, result.expected_key, result.verdict = None, None, Verdict.INFRA
        return
    compiled = result.outcome is not Outcome.COMPILE_ERROR and not (
        result.outcome is Outcome.TIMEOUT and result.run_seconds is None)
    if not compiled or result.outcome is Outcome.COMPILED:
        expected = {"ok": Outcome.COMPILED.value, "compile_error": "compile_error"}.get(compile_expect, "unknown")
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


def _finish_step(env: Env, run: ActiveRun, ctx: StepContext, manifest: Manifest, *,
                 collected: dict[str, bytes] | None = None) -> None:
    """Copy out (unless `collected` holds what a batch copied out already), judge, write steps/<step>/ and say
    the result at once."""
    with ctx.lock:
        if ctx.finished:
            return
        ctx.finished = True
        result = ctx.result
        # with the claim: after an interrupt the run's end may build the record from this result at once
        judge_step(ctx.step, ctx.arch, result, env.facts)
    files = dict(ctx.files_in)
    ctx.stage = "collecting"
    env.console.stage(ctx.step.id, _label(ctx), "collecting")
    if collected is not None:
        files.update(collected)
    else:
        try:
            if ctx.step.patches and not ctx.hit:  # the patched headers are reproducible from the patch: only that stays
                env.runner.exec(["rm", "-rf", PATCHED_CUTLASS], workdir=ctx.workdir, timeout_s=120)
            files.update(env.runner.get_files(ctx.workdir))  # every artifact the step left, the binary included
        except GpuReproError as exc:
            result.reason += f" (artifacts not copied out: {exc.one_line()})"
    # the step's directory in the runner goes with the run's (open_run removes it): its heavy part, the patched
    # CUTLASS copy, is gone already, and an exec per step would cost a warm rerun most of its time
    _write_step(run.directory, ctx, files)
    env.console.step_done(result)


def _write_step(directory: RunDirectory, ctx: StepContext, files: dict[str, bytes]) -> None:
    result = ctx.result
    for name, text in list(ctx.logs.items()):  # a copy: the step's thread may still add a log after an interrupt
        files[name] = text.encode()
    layouts = [e for e in result.events if e.get("event") == "layout"]
    if layouts:
        files["layout.json"] = (json.dumps(layouts, indent=2) + "\n").encode()
    log = ctx.logs.get("run.log") or ctx.logs.get("compile.log") or ""
    result.log_tail = log[-LOG_TAIL_CHARS:]
    data = result.to_json()
    if os.environ.get(VALIDATE_ENV):
        validate("result", data)
    files["result.json"] = (json.dumps(data, indent=2) + "\n").encode()
    try:
        directory.write_step_files(result.dirname, files)
    except OSError as exc:
        raise InfraError(f"cannot write {ctx.step.id}'s results under {directory.path}: {exc.strerror or exc}",
                         hint="free disk space under the reports directory") from None


def _finish_run(run: ActiveRun, contexts: list[StepContext], manifest: Manifest) -> None:
    """On every way out: unfinished steps are marked, then JUnit, summary.md, index.html and the record."""
    from ..render.html import write_report
    from ..render.junit import build_suite, run_properties, step_testcase, write_suite
    from ..render.markdown import repro_summary

    env: Env | None = run.state.get("env")
    for ctx in contexts:
        with ctx.lock:  # the step's thread may still be running: whichever takes the step first finishes it
            if ctx.finished:
                continue
            if run.status == STATUS_INTERRUPTED or (env and env.interrupted.is_set()):
                ctx.result.outcome, ctx.result.reason = Outcome.INTERRUPTED, f"interrupted during {ctx.stage}"
            elif not ctx.done:
                ctx.result.outcome = Outcome.INFRA_ERROR
                ctx.result.reason = f"not finished: {run.record.error or 'the run ended early'}"
            ctx.done = ctx.finished = True
        judge_step(ctx.step, ctx.arch, ctx.result, ctx.env.facts if ctx.env else None)
        try:
            _write_step(run.directory, ctx, dict(ctx.files_in))
        except GpuReproError:
            pass
    results = [ctx.result for ctx in contexts]
    record = run.record
    record.steps = [StepSummary(step=r.step, arch=r.arch, outcome=r.outcome.value, reason=r.reason,
                                expected=r.expected, verdict=r.verdict.value, patches=r.patches, cache=r.cache,
                                toolchain=r.toolchain) for r in results]
    record.patches = [{"name": n, "sha256": s} for n, s in sorted({(p["name"], p["sha256"])
                                                                   for r in results for p in r.patches})]
    infra = [r for r in results if r.verdict is Verdict.INFRA and r.outcome is Outcome.INFRA_ERROR]
    if infra and record.status != STATUS_INTERRUPTED:
        run.status = record.status = STATUS_FAILED  # evidence is missing: the run did not do what it was asked
        record.error = record.error or f"{infra[0].testcase_name}: {infra[0].reason}"
    record.exit_code = 130 if record.status == STATUS_INTERRUPTED else exit_code_for(r.verdict for r in results)
    suite = build_suite(f"repros@{record.hostname}", [step_testcase(r) for r in results],
                        timestamp=(record.started_at or "")[:19], hostname=record.hostname,
                        properties=run_properties(record))
    write_suite(suite, run.path / "junit.xml")
    atomic_write(run.path / "summary.md", repro_summary(record, results))
    record.write(run.path)  # index.html reads it
    try:
        write_report(run.path, manifest=manifest)
    except Exception as exc:  # noqa: BLE001 - `invoke report` can rewrite it later
        run.console.error(f"gpurepro: index.html not written: {type(exc).__name__}: {exc}")
