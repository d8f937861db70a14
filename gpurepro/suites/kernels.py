"""The kernels suite (`invoke kernels.test`): the kernel tests run where the kernels run, recorded like a repro run.

    [open_run] -> copy in (kernels/ and tests/kernels/; put_files, no mounts) -> probe (Python, torch, pytest,
    hypothesis there) -> pytest --junitxml -> copy out the JUnit -> parse -> [finish: reports/<run-id>/
    run.json, junit.xml (classname kernels.<module>), summary.md, kernels/{pytest.log, pytest-junit.xml,
    probe.json, files.json}]

Exit codes (docs/contracts.md): 0 every test passed or was skipped, 1 some test failed or errored, 2 bad input
(pytest rejected the -k/-m selection, or it selects nothing), 3 the suite could not run (Docker, image
without torch, pytest crashed or wrote no JUnit).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

from ..classify import one_line
from ..config import Config
from ..errors import EXIT_BAD_INPUT, EXIT_INFRA, InfraError, ToolMissingError, UsageError
from ..outcomes import CASE_ERROR, CASE_FAILED, CaseResult, exit_code_for as verdict_exit_code
from ..run import STATUS_COMPLETE, STATUS_INTERRUPTED, ActiveRun, KernelsInfo, RunDirectory, atomic_write, open_run
from ..run.record import KIND_KERNELS
from ..runners import Runner, make_runner

SUITE_PATHS = ("kernels", "tests/kernels")  # copied into the runner, relative to the project root
TEST_PATH = "tests/kernels"
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".hypothesis"}
OUT_DIR = "out"
PYTEST_JUNIT = "pytest-junit.xml"
ARTIFACT_DIR = "kernels"  # reports/<run-id>/kernels/
CLASS_PREFIX = "kernels"
LOG_TAIL_CHARS = 8000
REQUIRED_MODULES = ("torch", "pytest", "hypothesis")

# Written next to the copied tests: pytest then roots node ids (and JUnit classnames) at the work directory
# and ignores whatever configuration the runner's filesystem has above it.
PYTEST_INI = """[pytest]
addopts = -ra -p no:cacheprovider
junit_family = xunit1
junit_logging = all
junit_log_passing_tests = false
markers =
    gpu: needs a CUDA device (skipped with the reason where torch.cuda.is_available() is false)
"""

# Runs in the runner before the tests, without importing torch (seconds on a busy machine): which Python, and
# whether the modules the suite needs are installed.
PROBE = r"""
import importlib.metadata, importlib.util, json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable, "missing": {}}
for name in ("torch", "pytest", "hypothesis", "numpy", "rich"):
    try:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}")
        info[name] = importlib.metadata.version(name)
    except Exception as exc:
        info["missing"][name] = f"{type(exc).__name__}: {exc}"
print("@@kernels-probe " + json.dumps(info))
"""
# Loaded into the pytest session (-p): torch must import there, or the whole suite would skip and pass; the
# device the tests see is recorded from the same process.
PLUGIN_NAME = "gpurepro_kernels_plugin"
PLUGIN = r"""
import json, os
import pytest

def pytest_configure(config):
    try:
        import torch
    except Exception as exc:
        pytest.exit(f"torch does not import: {type(exc).__name__}: {exc}", returncode=3)
    info = {"torch_cuda": torch.version.cuda}
    try:
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            info["gpu_name"] = torch.cuda.get_device_name(0)
            info["gpu_compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except Exception as exc:
        info["cuda_available"] = False
        info["cuda_error"] = f"{type(exc).__name__}: {exc}"
    os.makedirs("out", exist_ok=True)
    with open(os.path.join("out", "device.json"), "w") as fh:
        json.dump(info, fh)
"""
PROBE_MARKER = "@@kernels-probe "


@dataclass
class KernelsRequest:
    backend: str = "auto"
    keyword: str | None = None  # pytest -k
    marker: str | None = None  # pytest -m
    python: str | None = None  # interpreter on the host backend (default: the one running the tool)
    timeout_s: int | None = None
    argv: list[str] = field(default_factory=lambda: list(sys.argv))

    def to_record(self, backend: str) -> dict:
        return {"suite": "kernels", "backend": backend, "keyword": self.keyword, "marker": self.marker}


@dataclass
class KernelsOutcome:
    run: RunDirectory
    cases: list[CaseResult]
    status: str
    exit_code: int

    @property
    def counts(self) -> Counter:
        return Counter(c.outcome for c in self.cases)


# --- inputs -------------------------------------------------------------------------------------------
def suite_files(root: pathlib.Path) -> dict[str, bytes]:
    """kernels/ and tests/kernels/ as copied into the runner (no caches), plus the generated pytest.ini."""
    files: dict[str, bytes] = {}
    for top in SUITE_PATHS:
        base = root / top
        if not base.is_dir():
            raise UsageError(f"{base} not found", hint="run from a gpurepro checkout (it holds kernels/ and tests/kernels/)")
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not path.is_symlink() and not SKIP_PARTS & set(rel.parts) and path.suffix != ".pyc":
                files[rel.as_posix()] = path.read_bytes()
    files["pytest.ini"] = PYTEST_INI.encode()
    files[f"{PLUGIN_NAME}.py"] = PLUGIN.encode()
    return files


def pytest_argv(python: str, request: KernelsRequest) -> list[str]:
    argv = [python, "-m", "pytest", "-p", PLUGIN_NAME, TEST_PATH, f"--junitxml={OUT_DIR}/{PYTEST_JUNIT}"]
    if request.keyword:
        argv += ["-k", request.keyword]
    if request.marker:
        argv += ["-m", request.marker]
    return argv


def reproduce_command(request: KernelsRequest, backend: str) -> str:
    parts = ["invoke", "kernels.test", "--backend", backend]
    if request.keyword:
        parts += ["--keyword", request.keyword]
    if request.marker:
        parts += ["--marker", request.marker]
    return shlex.join(parts)


# --- the probe ------------------------------------------------------------------------------------------
def parse_probe(output: str) -> dict | None:
    for line in output.splitlines():
        if line.startswith(PROBE_MARKER):
            try:
                return json.loads(line[len(PROBE_MARKER):])
            except json.JSONDecodeError:
                return None
    return None


def check_probe(probe: dict | None, output: str, where: str, backend: str) -> None:
    """The suite needs torch, pytest and hypothesis where it runs; without torch every test would skip (exit 0)."""
    if probe is None:
        raise InfraError(f"Python did not run in {where}: {one_line(output, 200) or 'no output'}")
    missing = {k: v for k, v in (probe.get("missing") or {}).items() if k in REQUIRED_MODULES}
    if missing:
        names = ", ".join(sorted(missing))
        hint = ("build the image with torch: `invoke image.build --target vllm-dev` (or set GPUREPRO_IMAGE)"
                if backend == "docker" else
                "install them for that Python: `bash kernels/install-cpu-torch.sh` and `pip install pytest hypothesis`")
        raise InfraError(f"{where} lacks {names} ({one_line(next(iter(missing.values())), 120)})", hint=hint)


# --- JUnit in, JUnit out ----------------------------------------------------------------------------------
def _classname_and_name(classname: str, name: str) -> tuple[str, str]:
    """pytest's `tests.kernels.test_x[.Class]` + `test_y[p]` -> `kernels.test_x`, `[Class.]test_y[p]`."""
    parts = [p for p in classname.split(".") if p]
    if not parts:  # a collection error: pytest names the module in `name`, with no classname
        module = name.replace("/", ".").removesuffix(".py").split(".")[-1]
        return f"{CLASS_PREFIX}.{module}", "collection"
    if parts[:2] == ["tests", "kernels"]:
        parts = parts[2:]
    if not parts:
        return CLASS_PREFIX, name
    module, inner = parts[0], parts[1:]
    return f"{CLASS_PREFIX}.{module}", ".".join([*inner, name])


COLLECTION_SKIP_RE = re.compile(r"""Skipped: (?P<reason>.*?)['"]\)\s*$""", re.DOTALL)
CAPTURE_HEADER_RE = re.compile(r"^-+ Captured (?:Log|Out|Err|stdout|stderr)[^-]*-+$", re.MULTILINE)


def _captured(text: str) -> str:
    """pytest's captured-output sections, or "" when every section is empty (junit_logging=all writes them)."""
    return text if CAPTURE_HEADER_RE.sub("", text).strip() else ""


def parse_pytest_junit(data: bytes, *, workdir: str | None = None) -> list[CaseResult]:
    """pytest's JUnit file -> cases; paths under ``workdir`` made relative. ValueError when it is not JUnit."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ValueError(f"not a JUnit file (root element <{root.tag}>)")
    cases = []
    for case in root.iter("testcase"):
        classname, name = _classname_and_name(case.get("classname", ""), case.get("name", ""))
        outcome, message, detail = "passed", "", ""
        for tag, kind in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome, message, detail = kind, found.get("message", ""), (found.text or "").strip()
                break
        if outcome == "skipped" and message == "collection skipped":
            # a module-level skip: pytest puts the reason in a (path, line, "Skipped: reason") tuple
            found = COLLECTION_SKIP_RE.search(detail)
            message = found.group("reason") if found else message
        output = "\n".join(filter(None, (_captured(case.findtext("system-out") or "").strip(),
                                         _captured(case.findtext("system-err") or "").strip())))
        if workdir:
            prefix = workdir.rstrip("/") + "/"
            message, detail, output = (s.replace(prefix, "") for s in (message, detail, output))
        try:
            seconds = float(case.get("time", "0") or 0)
        except ValueError:
            seconds = 0.0
        cases.append(CaseResult(classname, name, outcome, message, detail, seconds, output))
    return cases


def session_case(outcome: str, message: str, detail: str = "", *, infra: bool = False) -> CaseResult:
    """The whole session as one case, where pytest gave no per-test results (infra failure, timeout)."""
    return CaseResult(f"{CLASS_PREFIX}.session", "pytest", outcome, message, detail, infra=infra)


def exit_code_for(pytest_code: int | None, cases: list[CaseResult], request: KernelsRequest) -> int:
    """pytest's exit status and the cases -> docs/contracts.md's exit codes (the shared verdict rule)."""
    if pytest_code == 4:  # usage error: a bad -k/-m expression or option
        return EXIT_BAD_INPUT
    if pytest_code == 5:  # no tests collected
        return EXIT_BAD_INPUT if (request.keyword or request.marker) else EXIT_INFRA
    if pytest_code == 3:  # internal error
        return EXIT_INFRA
    code = verdict_exit_code(c.verdict for c in cases)
    if code == 0 and pytest_code not in (0, None):  # a non-zero status with nothing failing: not the tests' verdict
        return EXIT_INFRA
    return code


# --- the suite --------------------------------------------------------------------------------------------------
def execute(config: Config, request: KernelsRequest, *, console=None, runner: Runner | None = None) -> KernelsOutcome:
    from ..render.console import Console

    console = console or Console()
    files = suite_files(config.root)  # bad checkout: exit 2 before anything is created
    runner = runner or make_runner(config, request.backend, log=console.info, purpose="kernels")
    state = {"cases": [], "artifacts": {}}

    def finish(run: ActiveRun) -> None:
        _finish_run(run, state, request)

    with open_run(config, kind=KIND_KERNELS, request=request.to_record(runner.name), runner=runner,
                  argv=request.argv, console=console, finish=finish) as run:
        run.record.kernels = KernelsInfo(paths=list(SUITE_PATHS), files={
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())})
        state["artifacts"]["files.json"] = (json.dumps(run.record.kernels.files, indent=2) + "\n").encode()
        run.save()
        state["cases"] = _run_pytest(config, request, run, files, state["artifacts"])
    outcome = KernelsOutcome(run=run.directory, cases=state["cases"], status=run.status,
                             exit_code=run.record.exit_code)
    _print_results(console, outcome, run.record)
    return outcome


def _run_pytest(config: Config, request: KernelsRequest, run: ActiveRun, files: dict[str, bytes],
                artifacts: dict[str, bytes]) -> list[CaseResult]:
    """copy in -> probe -> pytest -> copy out -> parse."""
    runner, console, info = run.runner, run.console, run.record.kernels
    workdir = f"{run.work_root}/kernels"
    python = _python(runner, request)
    where = (f"container {getattr(runner, 'container_name', '?')} ({run.record.env('image', '?')})"
             if runner.name == "docker" else f"{python} on this host")
    console.info(f"{runner.name}: copying {len(files)} files ({', '.join(SUITE_PATHS)}) to {workdir}")
    runner.put_files(workdir, files)
    probed = runner.exec([python, "-c", PROBE], workdir=workdir, timeout_s=300)
    probe = parse_probe(probed.output)
    if probe is not None:
        artifacts["probe.json"] = (json.dumps(probe, indent=2) + "\n").encode()
        info.probe = probe
    check_probe(probe, probed.output, where, runner.name)
    console.info(f"python {probe['python']}, torch {probe['torch']}, pytest {probe['pytest']}, "
                 f"hypothesis {probe['hypothesis']}")

    argv = pytest_argv(python, request)
    timeout_s = request.timeout_s or config.kernels.timeout_s
    console.info(f"$ {shlex.join(argv)}")
    ran = runner.exec(argv, workdir=workdir, timeout_s=timeout_s, env={"PYTHONDONTWRITEBYTECODE": "1"})
    info.pytest_exit_code, info.seconds, info.timed_out, info.argv = ran.exit_code, round(ran.seconds, 3), \
        ran.timed_out, argv
    artifacts["pytest.log"] = f"$ {shlex.join(argv)}\n{ran.output}".encode()
    out = runner.get_files(f"{workdir}/{OUT_DIR}")
    junit = out.get(PYTEST_JUNIT)
    if "device.json" in out:
        try:
            probe.update(json.loads(out["device.json"]))
        except ValueError:
            pass
        artifacts["probe.json"] = (json.dumps(probe, indent=2) + "\n").encode()
        console.info(f"device: {probe.get('gpu_name')} (cc {probe.get('gpu_compute_capability')})"
                     if probe.get("cuda_available") else "device: no CUDA device (GPU tests skipped)")
    if ran.exit_code == 3 and not ran.timed_out:  # pytest's internal error, or the plugin's exit (torch broken)
        raise InfraError(f"pytest could not run the suite (exit 3): "
                         f"{one_line(_last_lines(ran.output), 240) or 'no output'}")
    if ran.timed_out:
        cases = parse_pytest_junit(junit, workdir=workdir) if junit else []
        cases.append(session_case(CASE_FAILED, f"timeout: pytest ran past {int(timeout_s)} s and was stopped",
                                  ran.output[-LOG_TAIL_CHARS:]))
        return cases
    if junit is None:
        raise InfraError(f"pytest wrote no JUnit (exit {ran.exit_code}): "
                         f"{one_line(_last_lines(ran.output), 200) or 'no output'}")
    artifacts[PYTEST_JUNIT] = junit
    try:
        return parse_pytest_junit(junit, workdir=workdir)
    except ValueError as exc:
        raise InfraError(f"pytest's JUnit is unreadable: {exc}") from None


def _python(runner: Runner, request: KernelsRequest) -> str:
    if runner.name == "docker":
        return "python3"  # the image's venv is first on PATH
    python = request.python or sys.executable
    if not python:
        raise ToolMissingError("python", "this host (pass --python)")
    return python


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:])


# --- the record -------------------------------------------------------------------------------------------------
def _finish_run(run: ActiveRun, state: dict, request: KernelsRequest) -> None:
    from ..render.junit import build_suite, kernel_testcase, run_properties, write_suite
    from ..render.markdown import kernels_summary

    record = run.record
    info = record.kernels or KernelsInfo(paths=list(SUITE_PATHS))
    record.kernels = info
    if run.status == STATUS_COMPLETE:
        cases = state["cases"]
        record.exit_code = exit_code_for(info.pytest_exit_code, cases, request)
    elif run.status == STATUS_INTERRUPTED:
        cases = state["cases"] = [session_case(CASE_ERROR, "interrupted before pytest finished", infra=True)]
        record.exit_code = 130
    else:  # CI sees an <error>, not an empty green suite
        cases = state["cases"] = [session_case(CASE_ERROR, record.error or "the suite could not run", infra=True)]
        record.exit_code = run.error.exit_code if run.error else EXIT_INFRA
    counts = Counter(c.outcome for c in cases)
    info.counts = {k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")}
    info.failed = [{"test": c.id, "outcome": c.outcome, "message": one_line(c.message, 300)}
                   for c in cases if c.outcome in (CASE_FAILED, CASE_ERROR)]
    record.reproduce = reproduce_command(request, record.backend)
    for name, data in state["artifacts"].items():
        atomic_write(run.path / ARTIFACT_DIR / name, data)
    probe = info.probe or {}
    properties = run_properties(
        record, python_version=probe.get("python"), torch_version=probe.get("torch"),
        pytest_version=probe.get("pytest"), hypothesis_version=probe.get("hypothesis"),
        cuda_available=probe.get("cuda_available"), pytest_exit_code=info.pytest_exit_code,
        gpu_name=probe.get("gpu_name") or record.env("gpu_name"),
        gpu_compute_capability=probe.get("gpu_compute_capability") or record.env("gpu_compute_capability"))
    suite = build_suite(f"kernels@{record.hostname}", [kernel_testcase(c) for c in cases],
                        timestamp=(record.started_at or "")[:19], hostname=record.hostname, properties=properties)
    write_suite(suite, run.path / "junit.xml")
    atomic_write(run.path / "summary.md", kernels_summary(record, cases))


def _print_results(console, outcome: KernelsOutcome, record) -> None:
    n = outcome.counts
    for c in outcome.cases:
        if c.outcome in (CASE_FAILED, CASE_ERROR):
            console.info(f"  {c.outcome.upper()} {c.id}: {one_line(c.message, 200)}")
    seconds = record.kernels.seconds if record.kernels else None
    console.info(f"kernels: {n['passed']} passed, {n['failed']} failed, {n['error']} errors, {n['skipped']} skipped"
                 + (f" in {seconds} s" if seconds is not None else "") + f" (exit {outcome.exit_code})")
    console.info(f"report: {outcome.run.path}")
