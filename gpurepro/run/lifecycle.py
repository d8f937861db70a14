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
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Callable

from ..config import Config
from ..environment import git_state, host_facts
from ..errors import GpuReproError, InfraError, InterruptedRun, sigterm_interrupts
from ..redaction import captured_environment
from ..runners import Facts, Runner
from . import lock
from .directory import STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunDirectory, now_utc
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
    try:
        directory = RunDirectory.create(config.reports_dir)
        lock.acquire(directory.path)  # in use until it ends: reports.prune and bundle.create leave it alone
    except OSError as exc:
        raise InfraError(f"cannot create a run directory under {config.reports_dir}: {exc.strerror or exc}",
                         hint="check the disk and GPUREPRO_REPORTS") from None
    run = ActiveRun(directory, new_record(config, directory, runner, kind=kind, argv=argv, request=request),
                    runner, console)
    try:
        run.save()
        directory.point_latest()
        restore = sigterm_interrupts()
        runner.run_tag = run.run_id  # lets the runner find this run's processes if it is cancelled
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
            console.error("interrupted: stopping the run's commands; run marked interrupted")
            for each in run.runners():
                with contextlib.suppress(Exception):  # best effort: the record must still be written
                    each.cancel(f"{each.work_root().rstrip('/')}/{run.run_id}")
            raise InterruptedRun("interrupted") from None
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
            _end(run, finish)
    finally:
        lock.release(directory.path)


def _end(run: ActiveRun, finish) -> None:
    """Outputs, the final record and the runner's clean-up; none of them may hide the run's own error."""
    run.record.finish(run.status)
    try:
        if finish is not None:
            finish(run)
    except GpuReproError as exc:
        print(f"gpurepro: {exc.one_line()}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the record below must still be written
        print(f"gpurepro: writing the run's outputs failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        run.save()
    except GpuReproError as exc:
        print(f"gpurepro: {exc.one_line()}", file=sys.stderr)
    for runner in run.runners():
        with contextlib.suppress(Exception):
            if run.status != STATUS_INTERRUPTED:  # cancel() already cleaned up
                runner.remove_dir(f"{runner.work_root().rstrip('/')}/{run.run_id}")
        with contextlib.suppress(Exception):
            runner.close()
