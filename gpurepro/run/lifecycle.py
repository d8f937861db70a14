"""One run lifecycle for every kind of run (repro steps, kernels.test, replays, nightly targets).

    with open_run(config, kind=..., request=..., runner=..., console=..., finish=...) as run:
        ...the suite's stages...

`open_run` owns, once: the run directory, its lock, run.json's header (status `interrupted` until the run
ends), `reports/latest`, SIGTERM as an interrupt, the runner's start, probe and clean-up, and the final
status. The suite's `finish(run)` writes its own outputs (JUnit, summary, result files) on every way out,
an interrupt or an infrastructure error included, before run.json is rewritten and the lock released.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..config import Config
from ..environment import git_state, host_facts
from ..errors import EXIT_INFRA, GpuReproError, InfraError, InterruptedRun, sigterm_interrupts
from ..redaction import captured_environment
from ..runners import Facts, Runner
from . import lock
from .directory import RUN_JSON, STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunDirectory, now_utc
from .record import KIND_REPRO, RunRecord


@dataclass
class ActiveRun:
    """What a suite sees of its run while it is under way."""

    directory: RunDirectory
    record: RunRecord
    runner: Runner
    console: object
    facts: Facts | None = None
    status: str = STATUS_FAILED
    error: GpuReproError | None = None  # why the run failed, when it did
    state: dict = field(default_factory=dict)  # the suite's own bookkeeping for its finish()
    extra_runners: list[Runner] = field(default_factory=list)  # a toolchain matrix runs one runner per toolchain

    @property
    def path(self) -> pathlib.Path:
        return self.directory.path

    @property
    def run_id(self) -> str:
        return self.directory.run_id

    @property
    def work_root(self) -> str:
        """This run's directory inside the runner (container or host): removed when the run ends."""
        return f"{self.runner.work_root().rstrip('/')}/{self.run_id}"

    def save(self) -> None:
        self.record.write(self.path)

    def attach(self, runner: Runner, *, nvcc: str, require_nvcc: bool = True) -> Facts:
        """Another runner for this run (a toolchain matrix): started and probed now, cancelled, cleaned up and
        closed with the run's own."""
        self.extra_runners.append(runner)
        runner.run_tag = self.run_id
        runner.start()
        return runner.probe(nvcc, require_nvcc=require_nvcc)

    def runners(self) -> list[Runner]:
        return [self.runner, *self.extra_runners]


def environment_of(facts: Facts) -> dict:
    """run.json's `environment`: what the runner reported, plus the GPU it sees (None where there is none)."""
    env = dict(facts.values)
    gpu = facts.gpu
    env.update(gpu_name=gpu.name if gpu else None, gpu_compute_capability=gpu.compute_capability if gpu else None,
               gpu_arch=gpu.arch if gpu else None)
    if gpu:
        env["driver_version"] = gpu.driver
    return env


def new_record(config: Config, run: RunDirectory, runner: Runner, *, kind: str, argv: list[str],
               request: dict) -> RunRecord:
    return RunRecord(
        run_id=run.run_id, kind=kind, started_at=now_utc().isoformat(), command=list(argv), request=request,
        git=git_state(config.root), host=host_facts(), backend=runner.name, config=str(config.path),
        env_vars=captured_environment())


@contextlib.contextmanager
def open_run(config: Config, *, kind: str, request: dict, runner: Runner, argv: list[str], console,
             finish: Callable[[ActiveRun], None] | None = None, nvcc: str | None = None):
    run = _begin(config, runner, kind=kind, argv=argv, request=request, console=console)
    directory = run.directory
    try:
        restore = sigterm_interrupts()
        runner.run_tag = run.run_id  # lets the runner find this run's processes if it is cancelled
        problem = None
        try:
            runner.start()
            # a repro cannot compile without nvcc: say so (exit 3, with the fix) before any step starts
            run.facts = runner.probe(nvcc or config.compile.nvcc, require_nvcc=kind == KIND_REPRO)
            run.record.environment = environment_of(run.facts)
            run.save()
            console.environment(run.facts)
            yield run
            run.status = STATUS_COMPLETE
        except (KeyboardInterrupt, InterruptedRun):
            run.status = STATUS_INTERRUPTED
            for each in run.runners():
                with contextlib.suppress(Exception):  # best effort: the record must still be written
                    each.cancel(f"{each.work_root().rstrip('/')}/{run.run_id}")
            # the front end prints this as the run's one line on stderr
            raise InterruptedRun(f"interrupted: the run's commands were stopped; run {run.path} marked "
                                 "interrupted") from None
        except GpuReproError as exc:
            run.status, run.error = STATUS_FAILED, exc
            run.record.error = exc.one_line()
            raise
        except Exception as exc:
            run.status = STATUS_FAILED
            run.record.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            restore()
            problem = _end(run, finish)
        if problem is not None:  # the run itself went well, its outputs could not be written: exit 3
            raise problem
    finally:
        lock.release(directory.path)


def _begin(config: Config, runner: Runner, *, kind: str, argv: list[str], request: dict, console) -> ActiveRun:
    """Directory, lock, run.json's header and reports/latest, or none of them: a run that cannot be recorded
    (a full or read-only disk) leaves no directory and no lock behind, only one line (exit 3)."""
    directory = None
    try:
        directory = RunDirectory.create(config.reports_dir)
        lock.acquire(directory.path)  # in use until it ends: reports.prune and bundle.create leave it alone
        run = ActiveRun(directory, new_record(config, directory, runner, kind=kind, argv=argv, request=request),
                        runner, console)
        run.save()
        directory.point_latest()
        return run
    except (OSError, InfraError) as exc:
        if directory is not None:
            shutil.rmtree(directory.path, ignore_errors=True)
        cause = exc if isinstance(exc, OSError) else exc.__context__
        detail = getattr(cause, "strerror", None) or (exc.one_line() if isinstance(exc, InfraError) else str(exc))
        raise InfraError(f"cannot start a run under {config.reports_dir}: {detail}",
                         hint="free disk space there, or point GPUREPRO_REPORTS at another directory") from None


def _end(run: ActiveRun, finish) -> GpuReproError | None:
    """Outputs, the final record and the runner's clean-up; none of them may hide the run's own error.

    Returns the error to raise when the run itself ended well but its outputs or record could not be written.
    When the run already failed or was interrupted, its own error is the one line the user sees: a later
    write failure (the same full disk, usually) is not printed as a second one."""
    run.record.finish(run.status)
    problem = None
    # the runners' work directories go while the outputs are written: a removal is a wait on the runner (an
    # exec in the container), the outputs are work here. Every step is copied out or marked by now.
    cleanup = threading.Thread(target=_remove_work_dirs, args=(run,), name="cleanup", daemon=True)
    cleanup.start()
    try:
        if finish is not None:
            finish(run)
    except GpuReproError as exc:
        problem = exc
    except Exception as exc:  # noqa: BLE001 - the record below must still be written
        problem = InfraError(f"writing the run's outputs failed: {type(exc).__name__}: {exc}")
    if problem is not None:
        _fail(run, problem)
    saved = _save_final(run)
    if saved is not None:
        problem = problem or saved
    cleanup.join(CLEANUP_WAIT_S)
    for runner in run.runners():
        with contextlib.suppress(Exception):
            runner.close()
    return problem if run.error is problem else None


CLEANUP_WAIT_S = 150  # longer than the removal's own limit (120 s): it ends first


def _remove_work_dirs(run: ActiveRun) -> None:
    if run.status == STATUS_INTERRUPTED:  # cancel() already cleaned up
        return
    for runner in run.runners():
        with contextlib.suppress(Exception):
            runner.remove_dir(f"{runner.work_root().rstrip('/')}/{run.run_id}")


def _fail(run: ActiveRun, problem: GpuReproError) -> None:
    """A run that went well until its outputs could not be written has failed (its evidence is incomplete)."""
    if run.status != STATUS_COMPLETE:
        return
    run.status, run.error = STATUS_FAILED, problem
    run.record.status = STATUS_FAILED
    run.record.error = problem.one_line()


def _save_final(run: ActiveRun) -> GpuReproError | None:
    """The final run.json. If it cannot be written (a full disk), this run's partial outputs are dropped to make
    room and the record written again, marked failed; if even that fails, the run directory is removed (and
    reports/latest with it where it points there), so no run is left looking complete or in progress."""
    if run.status == STATUS_FAILED:
        run.record.exit_code = run.error.exit_code if run.error is not None else EXIT_INFRA
    elif run.status == STATUS_INTERRUPTED:
        run.record.exit_code = InterruptedRun.exit_code
    try:
        run.save()
        return None
    except GpuReproError as exc:
        first = exc
    _fail(run, first)
    if run.status == STATUS_FAILED and run.record.exit_code in (None, 0, 1):
        run.record.exit_code = EXIT_INFRA
    for path in run.path.iterdir():
        if path.name in (RUN_JSON, lock.LOCK_NAME):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    try:
        run.save()
        return first
    except GpuReproError:
        pass
    try:  # last resort, not atomic: the header's own blocks, freed by the truncate, take the final record
        data = (json.dumps(run.record.to_json(), indent=2, default=str) + "\n").encode()
        with open(run.path / RUN_JSON, "r+b") as fh:
            fh.truncate(0)
            fh.write(data)
        return first
    except OSError:
        pass
    latest = run.path.parent / "latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() and os.readlink(latest) == run.run_id:
            latest.unlink()
    shutil.rmtree(run.path, ignore_errors=True)
    return first
