"""Nightly GPU CI: every step on every target (GPU host), targets concurrently, then one merged report.

A target is a Docker endpoint (unix://, tcp://, ssh://: whatever the docker SDK speaks) or the host
backend, with the device arch it is expected to have. Each target gets its own run directory (the
ordinary pipeline, unchanged); a step that departs from its expectation is run once more, and the pair
decides: departs again -> `changed` (a regression, or a fix), matches -> `flaky`. The merged report
(`nightly.json`, `junit.xml` with one suite per target, `summary.md`) puts changed first.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import yaml
from .config import Config
from .errors import (EXIT_DEPARTED, EXIT_INFRA, EXIT_OK, ConfigError, GpuReproError, InfraError,
                     InterruptedRun, UsageError)
from .outcomes import CaseResult, Outcome, StepResult, Verdict
from .render.junit import build_suite, kernel_testcase, step_testcase, write_suites
from .run import RunDirectory, RunRecord, atomic_write, now_utc, write_json

TARGET_KEYS = {"name", "docker", "backend", "arch", "compile_arch", "labels", "kernels", "image", "build"}
NIGHTLY_JSON = "nightly.json"

# classification of one step on one target after the rerun; the order is the summary's order
CHANGED, FLAKY, INFRA, NEW, MATCH, NOT_RUN = "changed", "flaky", "infra", "new", "match", "not_run"
CLASS_ORDER = (CHANGED, FLAKY, INFRA, NEW, MATCH, NOT_RUN)


@dataclass(frozen=True)
class Target:
    name: str
    backend: str                 # docker | host
    endpoint: str | None = None  # docker base_url; None: DOCKER_HOST / the default socket
    arch: str | None = None      # device arch the host should have (sm_121); None: not checked
    compile_arch: str | None = None  # the arch to compile for where a step lists it; else its first target
    labels: tuple[str, ...] = ()
    kernels: bool = True         # also run `kernels.test` there
    image: str | None = None     # the image for that daemon's container (default: gpurepro.yaml's docker.image)
    build: bool = True           # build the image there first (docker's layer cache: seconds when unchanged)

    def reproduce(self, step: str, arch: str) -> str:
        command = f"invoke repro {step} --arch {arch} --backend {self.backend}"
        if self.endpoint:
            command = f"DOCKER_HOST={shlex.quote(self.endpoint)} {command}"
        return command


def load_targets(path: pathlib.Path) -> list[Target]:
    """ci/targets.yaml, validated: a bad entry is one line naming the file and the key."""
    path = pathlib.Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list) or not data["targets"]:
        raise ConfigError(path, "targets", "expected a non-empty list of targets")
    if set(data) - {"version", "targets"}:
        raise ConfigError(path, sorted(set(data) - {"version", "targets"})[0], "unknown key (known: version, targets)")
    if data.get("version", 1) != 1:
        raise ConfigError(path, "version", f"unsupported version {data['version']!r} (this tool reads version 1)")
    targets, seen = [], set()
    for index, entry in enumerate(data["targets"]):
        where = f"targets[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(path, where, "expected a mapping")
        unknown = set(entry) - TARGET_KEYS
        if unknown:
            raise ConfigError(path, f"{where}.{sorted(unknown)[0]}", f"unknown key (known: {', '.join(sorted(TARGET_KEYS))})")
        name = entry.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(path, f"{where}.name", "expected a name of letters, digits, '-' and '_'")
        if name in seen:
            raise ConfigError(path, f"{where}.name", f"duplicate target '{name}'")
        seen.add(name)
        endpoint, backend = entry.get("docker"), entry.get("backend", "docker")
        if backend not in ("docker", "host"):
            raise ConfigError(path, f"{where}.backend", "expected docker or host")
        if backend == "host" and endpoint:
            raise ConfigError(path, f"{where}.docker", "a host target has no Docker endpoint")
        if endpoint is not None and (not isinstance(endpoint, str)
                                     or not endpoint.startswith(("unix://", "tcp://", "ssh://", "npipe://"))):
            raise ConfigError(path, f"{where}.docker", "expected a unix://, tcp:// or ssh:// endpoint")
        for key in ("arch", "compile_arch"):
            value = entry.get(key)
            if value is not None and not (isinstance(value, str) and value.startswith("sm_")):
                raise ConfigError(path, f"{where}.{key}", "expected an arch like sm_121 (or sm_121a to compile for)")
        labels = entry.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ConfigError(path, f"{where}.labels", "expected a list of strings")
        image = entry.get("image")
        if image is not None and (not isinstance(image, str) or not image or backend == "host"):
            raise ConfigError(path, f"{where}.image", "expected an image reference, on a docker target")
        kernels, build = entry.get("kernels", True), entry.get("build", True)
        for key, value in (("kernels", kernels), ("build", build)):
            if not isinstance(value, bool):
                raise ConfigError(path, f"{where}.{key}", "expected true or false")
        arch = entry.get("arch")
        targets.append(Target(name=name, backend=backend, endpoint=endpoint,
                              arch=arch.rstrip("af") if arch else None, compile_arch=entry.get("compile_arch"),
                              labels=tuple(labels), kernels=kernels, image=image, build=build))
    return targets


def select_targets(targets: list[Target], names) -> list[Target]:
    if not names:
        return targets
    known = {t.name: t for t in targets}
    missing = [n for n in names if n not in known]
    if missing:
        raise UsageError(f"unknown target '{missing[0]}'", hint=f"targets: {', '.join(known)}")
    return [known[n] for n in names]


# --- one target ------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One step on one target: the first observation, the rerun if it departed, and what the pair means."""

    result: StepResult
    classification: str
    first: StepResult | None = None  # the departed first run, when there was a rerun

    def to_json(self) -> dict:
        return {"classification": self.classification, "result": self.result.to_json(),
                "first": self.first.to_json() if self.first else None}

    @classmethod
    def from_json(cls, data: dict) -> "Entry":
        first = data.get("first")
        return cls(StepResult.from_json(data["result"]), data["classification"],
                   StepResult.from_json(first) if first else None)


@dataclass
class TargetReport:
    target: Target
    entries: list[Entry] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # run directories, relative to the nightly directory
    error: str | None = None                     # the target could not be run at all (or only in part)
    device: str | None = None
    kernels: dict | None = None  # kernels.test there: run, exit_code, counts, failed (test ids), error
    upgrade: dict | None = None  # --next-toolchain: the steps whose outcome would change (toolchain, changes)

    @property
    def status(self) -> str:
        if self.error or any(e.classification == INFRA for e in self.entries):
            return "infra_error"
        if self.kernels and self.kernels["exit_code"] not in (EXIT_OK, EXIT_DEPARTED):
            return "infra_error"
        return "complete"

    def to_json(self) -> dict:
        return {"target": dataclasses.asdict(self.target), "status": self.status, "error": self.error,
                "device": self.device, "runs": self.runs, "kernels": self.kernels, "upgrade": self.upgrade,
                "entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "TargetReport":
        t = dict(data["target"])
        t["labels"] = tuple(t.get("labels") or ())
        return cls(Target(**t), [Entry.from_json(e) for e in data.get("entries", [])], list(data.get("runs", [])),
                   data.get("error"), data.get("device"), data.get("kernels"), data.get("upgrade"))


def classify_pair(first: StepResult, rerun: StepResult | None) -> str:
    if first.verdict is Verdict.INFRA:
        return INFRA
    if first.verdict is not Verdict.DEPARTED:
        return {Verdict.MATCH: MATCH, Verdict.NEW: NEW, Verdict.NOT_RUN: NOT_RUN}[first.verdict]
    if rerun is None or rerun.verdict is Verdict.INFRA:
        return INFRA  # could not confirm the departure: evidence incomplete, not a verdict on the step
    return CHANGED if rerun.verdict is Verdict.DEPARTED else FLAKY


def run_target(config: Config, target: Target, nightly_dir: pathlib.Path, *, steps=None, jobs=None,
               make_runner=None, prepare=None, run_kernels=None, log=print, no_cache=False,
               next_toolchain: str | None = None) -> TargetReport:
    """Run every (or the given) step on one target, rerun what departed; never raises for the target's faults."""
    from .render.console import Console
    from .suites.repro import RunRequest, execute

    report = TargetReport(target)
    target_dir = nightly_dir / "targets" / target.name
    target_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(config, reports_dir=target_dir)
    if target.image:
        cfg = dataclasses.replace(cfg, docker=dataclasses.replace(cfg.docker, image=target.image))
    make_runner = make_runner or runner_factory
    with open(target_dir / "console.log", "a", encoding="utf-8") as console_log:
        console = Console(out=console_log, err=console_log)

        def one_run(step_ids, toolchain=None):
            request = RunRequest(steps=list(step_ids or []), all=not step_ids, prefer_arch=target.compile_arch,
                                 backend=target.backend, jobs=jobs, no_cache=no_cache, endpoint=target.endpoint,
                                 toolchains=[toolchain] if toolchain else None,
                                 argv=["invoke", "ci.nightly", "--target", target.name])
            # a toolchain lane makes its own runner (its image, on the target's endpoint)
            runner = None if toolchain else make_runner(cfg, target, console.info)
            outcome = execute(cfg, request, console=console, runner=runner)
            report.runs.append(outcome.run.path.relative_to(nightly_dir).as_posix())
            return outcome.results

        try:
            if prepare is not None:
                prepare(cfg, target, console.info)
            first = one_run(steps)
            departed = [r.step for r in first if r.verdict is Verdict.DEPARTED]
            reruns = {}
            if departed:
                log(f"{target.name}: {len(departed)} departed ({', '.join(departed)}); running them once more")
                reruns = {r.step: r for r in one_run(departed)}
            if target.kernels:
                report.kernels = _kernels(cfg, target, nightly_dir, console, run_kernels or kernels_on_target)
            if next_toolchain:
                report.upgrade = _upgrade(first, reruns, one_run(steps, next_toolchain), next_toolchain)
        except InterruptedRun:
            raise
        except GpuReproError as exc:
            report.error = exc.one_line()
            return report
        except Exception as exc:  # a target's failure must not take the other targets down
            report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            return report
    for result in first:
        result.reproduce = target.reproduce(result.step, result.arch)
        if result.device_arch and not report.device:
            report.device = result.device_arch
        rerun = reruns.get(result.step)
        if rerun is not None:
            rerun.reproduce = result.reproduce
        classification = classify_pair(result, rerun)
        report.entries.append(Entry(rerun or result, classification, result if rerun else None))
    if target.arch and report.device and report.device != target.arch:
        report.error = f"expected a {target.arch} device, found {report.device}: the target is misconfigured"
    return report


def _upgrade(first, reruns, upgraded, toolchain: str) -> dict:
    """The steps whose outcome would change with the next toolchain: informational, never the exit code."""
    now = {r.step: (reruns.get(r.step) or r) for r in first}
    changes = []
    for r in upgraded:
        before = now.get(r.step)
        if before is not None and before.outcome != r.outcome:
            changes.append({"step": r.step, "arch": r.arch, "now": before.outcome.value, "next": r.outcome.value,
                            "reason": r.reason})
    return {"toolchain": toolchain, "steps": len(upgraded), "changes": changes}


def _kernels(config, target, nightly_dir, console, run_kernels) -> dict:
    """kernels.test on the target; its faults are recorded (exit 3), never raised into the target's repros."""
    try:
        outcome = run_kernels(config, target, console)
    except InterruptedRun:
        raise
    except Exception as exc:  # noqa: BLE001 - one line of evidence, the run goes on
        error = exc.one_line() if isinstance(exc, GpuReproError) else f"{type(exc).__name__}: {exc}"
        return {"run": None, "exit_code": EXIT_INFRA, "counts": {}, "failed": [], "error": error[:300]}
    failed = [c.id for c in outcome.cases if c.outcome in ("failed", "error")]
    return {"run": outcome.run.path.relative_to(nightly_dir).as_posix(), "exit_code": outcome.exit_code,
            "counts": dict(outcome.counts), "failed": failed, "error": None,
            "cases": [dataclasses.asdict(c) for c in outcome.cases]}


def kernels_on_target(config: Config, target: Target, console):
    from .suites.kernels import KernelsRequest, execute

    runner = runner_factory(config, target, console.info, purpose="kernels")
    request = KernelsRequest(backend=target.backend, argv=["invoke", "ci.nightly", "--target", target.name])
    return execute(config, request, console=console, runner=runner)


def runner_factory(config: Config, target: Target, log, *, purpose: str = "repro"):
    from .runners import make_runner

    return make_runner(config, target.backend, log=log, purpose=purpose, endpoint=target.endpoint)


def ensure_image(config: Config, target: Target, log) -> None:
    """The image build on the target's daemon, cached by Docker's layers, so a changed Dockerfile or pin
    reaches the nightly; `build: false` uses the image the daemon has (and says so when it has none)."""
    if target.backend != "docker":
        return
    from .images import build_base, build_image, image_exists
    from .runners.docker import connect

    where = target.endpoint or "the default daemon"
    client = connect(target.endpoint)
    try:
        wanted = next((name for name, ref in config.docker.images.items() if ref == config.docker.image), None)
        if not target.build or wanted is None:
            if not image_exists(client, config.docker.image):
                raise InfraError(f"image {config.docker.image} not found on {where}",
                                 hint="load it there, or let the nightly build it (build: true, a Dockerfile target)")
            log(f"image {config.docker.image} on {where} used as it is (no build)")
            return
        log(f"building {config.docker.image} on {where} (cached)")
        try:
            build_base(client, config, log=log)
            build_image(client, config, wanted, log=log)
        except OSError as exc:
            raise InfraError(f"building {config.docker.image} for target {target.name} failed: {exc}") from None
    finally:
        client.close()


# --- all targets -----------------------------------------------------------------------------------------
@dataclass
class NightlyOutcome:
    path: pathlib.Path
    targets: list[TargetReport]
    exit_code: int


def nightly(config: Config, targets: list[Target], *, steps=None, jobs=None, reports_dir=None, make_runner=None,
            prepare=ensure_image, run_kernels=None, log=print, no_cache=False,
            next_toolchain: str | None = None) -> NightlyOutcome:
    run = RunDirectory.create(pathlib.Path(reports_dir or config.reports_dir))
    started = now_utc().isoformat()
    write_json(run.path / NIGHTLY_JSON, {"nightly_id": run.run_id, "status": "interrupted", "started_at": started,
                                         "targets": [t.name for t in targets]})
    run.point_latest()
    log(f"nightly {run.run_id}: {len(targets)} target(s): {', '.join(t.name for t in targets)}")
    lock = threading.Lock()

    def one(target: Target) -> TargetReport:
        def say(message: str) -> None:
            with lock:
                log(message)

        say(f"{target.name}: started ({target.endpoint or target.backend})")
        report = run_target(config, target, run.path, steps=steps, jobs=jobs, make_runner=make_runner,
                            prepare=prepare, run_kernels=run_kernels, log=say, no_cache=no_cache,
                            next_toolchain=next_toolchain)
        counts = counts_of(report)
        say(f"{target.name}: {report.status}" + (f" — {report.error}" if report.error else "")
            + f" ({', '.join(f'{n} {c}' for c, n in counts.items() if n)})")
        return report

    # threads, not processes: the work is waiting on daemons; one thread per target runs them concurrently
    with ThreadPoolExecutor(max_workers=max(1, len(targets)), thread_name_prefix="target") as pool:
        reports = list(pool.map(one, targets))
    code = write_merged(run.path, reports, title=f"gpurepro nightly {run.run_id}", started_at=started)
    return NightlyOutcome(run.path, reports, code)


def exit_code_for(reports: list[TargetReport]) -> int:
    """3 when evidence is missing (a target or a step hit infrastructure), else 1 for anything changed."""
    if any(r.status == "infra_error" for r in reports):
        return EXIT_INFRA
    if any(e.classification == CHANGED for r in reports for e in r.entries):
        return EXIT_DEPARTED
    if any(r.kernels and r.kernels["exit_code"] == EXIT_DEPARTED for r in reports):
        return EXIT_DEPARTED
    return EXIT_OK


def counts_of(report: TargetReport) -> dict[str, int]:
    counts = {c: 0 for c in CLASS_ORDER}
    for entry in report.entries:
        counts[entry.classification] += 1
    return counts


# --- the merged report -----------------------------------------------------------------------------------
def write_merged(path: pathlib.Path, reports: list[TargetReport], *, title: str, started_at: str | None = None) -> int:
    path = pathlib.Path(path)
    code = exit_code_for(reports)
    write_json(path / NIGHTLY_JSON, {
        "nightly_id": path.name, "status": "complete", "started_at": started_at,
        "finished_at": now_utc().isoformat(), "exit_code": code, "targets": [r.to_json() for r in reports]})
    write_junit(path / "junit.xml", reports)
    from .render.markdown import nightly_summary

    atomic_write(path / "summary.md", nightly_summary(reports, title=title))
    from .render.html import write_nightly_report

    write_nightly_report(path)  # index.html: steps x targets, first run beside rerun
    return code


def target_results(report: TargetReport) -> list[StepResult]:
    """What JUnit shows for a target: the final observation; a flaky one says so; a dead target is one error."""
    results = []
    for entry in report.entries:
        result = dataclasses.replace(entry.result)
        if entry.classification == FLAKY and entry.first is not None:
            result.log_tail = (f"flaky: the first run observed {entry.first.outcome.value} "
                               f"({entry.first.reason}); the rerun matched\n") + result.log_tail
        results.append(result)
    if report.error:
        results.append(StepResult(step="target", arch=report.target.compile_arch or report.target.arch or "-",
                                  outcome=Outcome.INFRA_ERROR, reason=f"{report.target.name}: {report.error}",
                                  verdict=Verdict.INFRA))
    return results


def write_junit(path: pathlib.Path, reports: list[TargetReport]) -> None:
    suites = []
    stamp = now_utc().replace(microsecond=0, tzinfo=None).isoformat()
    for report in reports:
        t = report.target
        properties = {"target": t.name, "backend": t.backend, "endpoint": t.endpoint or "",
                      "expected_arch": t.arch or "", "device_arch": report.device or "",
                      "labels": ",".join(t.labels), "runs": " ".join(report.runs)}
        cases = [step_testcase(r) for r in target_results(report)] + _kernel_cases(report)
        suites.append(build_suite(t.name, cases, timestamp=stamp, hostname=t.endpoint or t.name,
                                  properties=properties))
    write_suites(suites, path)


def _kernel_cases(report: TargetReport) -> list:
    """The target's kernels.test testcases (classname kernels.<module>), or one error when it could not run."""
    kernels = report.kernels
    if not kernels:
        return []
    cases = kernels.get("cases")
    if not cases:
        message = kernels.get("error") or "kernels.test recorded no test cases"
        return [kernel_testcase(CaseResult("kernels", "kernels.test", "error", message, infra=True))]
    names = {f.name for f in dataclasses.fields(CaseResult)}
    return [kernel_testcase(CaseResult(**{k: v for k, v in c.items() if k in names})) for c in cases]


# --- report.merge: per-runner directories into one ---------------------------------------------------------
def load_reports(path: pathlib.Path) -> list[TargetReport]:
    """Target reports from a nightly directory, or from a plain run directory (one target, no reruns)."""
    path = pathlib.Path(path)
    nightly_json, run_json = path / NIGHTLY_JSON, path / "run.json"
    try:
        if nightly_json.is_file():
            data = json.loads(nightly_json.read_text())
            if "targets" in data and data["targets"] and isinstance(data["targets"][0], dict):
                return [TargetReport.from_json(t) for t in data["targets"]]
            raise UsageError(f"{path}: the nightly run did not finish (no results in {NIGHTLY_JSON})")
        if run_json.is_file():
            record = RunRecord.read(path)
            results = [_step_result(path, dataclasses.asdict(s)) for s in record.steps]
            target = Target(name=f"{record.hostname or path.name}-{record.backend or 'run'}",
                            backend=record.backend or "docker")
            report = TargetReport(target, [Entry(r, classify_pair(r, r)) for r in results], [path.name],
                                  None if record.status == "complete" else f"run {record.status}")
            report.device = next((r.device_arch for r in results if r.device_arch), None)
            return [report]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: not a gpurepro run directory ({type(exc).__name__}: {exc})") from None
    raise UsageError(f"{path}: not a gpurepro run directory (no {NIGHTLY_JSON} or run.json)")


def _step_result(run_dir: pathlib.Path, summary: dict) -> StepResult:
    """The step's full result.json (device arch, reproduce command); run.json keeps only a summary."""
    dirname = summary["step"] + (f"@{summary['toolchain']}" if summary.get("toolchain") else "")
    full = run_dir / "steps" / dirname / "result.json"
    return StepResult.from_json(json.loads(full.read_text()) if full.is_file() else summary)


def merge_reports(inputs: list[pathlib.Path], out_dir: pathlib.Path) -> tuple[pathlib.Path, int]:
    if not inputs:
        raise UsageError("no run directory given", hint="name the per-runner directories to merge")
    reports = [report for path in inputs for report in load_reports(path)]
    names = [r.target.name for r in reports]
    for name in set(names):  # two runners with one name would overwrite each other's suite
        if names.count(name) > 1:
            raise UsageError(f"target '{name}' appears in more than one input", hint="give each runner its own target name")
    run = RunDirectory.create(pathlib.Path(out_dir))
    code = write_merged(run.path, reports, title=f"gpurepro merged report {run.run_id}")
    run.point_latest()
    return run.path, code
