"""JUnit, written with junitparser: valid against the Jenkins xUnit schema (tests/data/junit-10.xsd).

Not junit-xml: its 1.9 release (the last, in 2020) writes a `disabled` attribute the Jenkins schema rejects.
One <testsuite> per run and target; environment facts as suite properties; nothing extra on <testcase>.
A repro testcase fails only when the observed outcome departs from the manifest's expectation; an
infrastructure error is an <error>, never a failure; a skipped step or test is <skipped>.
"""
from __future__ import annotations

import os
import pathlib
import tempfile

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from ..run.record import RunRecord
from ..outcomes import CASE_ERROR, CASE_FAILED, CASE_SKIPPED, CaseResult, Outcome, StepResult, Verdict
from .escape import visible

SYSTEM_OUT_LIMIT = 16_000


def _time(seconds: float | None) -> float:
    return round(seconds or 0.0, 3)


def step_testcase(result: StepResult, *, classname: str = "repros") -> TestCase:
    case = TestCase(result.testcase_name, classname=classname,
                    time=_time((result.compile_seconds or 0) + (result.run_seconds or 0)))
    reason = visible(result.reason)
    if result.verdict is Verdict.INFRA:
        case.result = [Error(message=reason, type_=Outcome.INFRA_ERROR.value)]
    elif result.outcome is Outcome.INTERRUPTED:
        case.result = [Error(message=reason, type_=Outcome.INTERRUPTED.value)]
    elif result.outcome is Outcome.SKIPPED:
        case.result = [Skipped(message=reason)]
    elif result.verdict is Verdict.DEPARTED:
        message = f"expected {result.expected}, observed {result.outcome.value}: {reason}"
        case.result = [Failure(message=message, type_=result.outcome.value)]
    header = f"outcome: {result.outcome.value} ({result.verdict.value}; expected {result.expected or 'unknown'})\n"
    if result.cache:
        header += f"compile cache: {result.cache.get('status')} ({str(result.cache.get('key') or '')[:16]})\n"
    if result.reproduce:
        header += f"reproduce: {result.reproduce}\n"
    case.system_out = visible(header + result.log_tail[-SYSTEM_OUT_LIMIT:])
    return case


def kernel_testcase(c: CaseResult) -> TestCase:
    case = TestCase(c.name, classname=c.classname, time=_time(c.seconds))
    message = visible(" ".join(c.message.split())[:300]) if c.message else None
    result = {CASE_FAILED: lambda: Failure(message=message, type_="failure"),
              CASE_ERROR: lambda: Error(message=message, type_="infra_error" if c.infra else "error"),
              CASE_SKIPPED: lambda: Skipped(message=message)}.get(c.outcome)
    if result is not None:
        element = result()
        if c.detail:
            element.text = visible(c.detail[-SYSTEM_OUT_LIMIT:])
        case.result = [element]
    if c.output:
        case.system_out = visible(c.output[-SYSTEM_OUT_LIMIT:])
    return case


ENVIRONMENT_PROPERTIES = ("image", "image_id", "image_digest", "nvcc_version", "cutlass_version", "flashinfer_version",
                          "gpu_name", "gpu_compute_capability", "driver_version")


def run_properties(record: RunRecord, **extra) -> dict[str, object]:
    """The suite's properties: which run, which commit, which toolchain and device; blanks left out."""
    from .. import __version__

    values = {"run_id": record.run_id, "backend": record.backend, "status": record.status,
              "git_commit": record.git_commit, "git_dirty": record.git_dirty, "tool_version": __version__,
              **{k: record.env(k) for k in ENVIRONMENT_PROPERTIES}, **extra}
    return {k: v for k, v in values.items() if v not in (None, "")}


def build_suite(name: str, cases: list[TestCase], *, timestamp: str, hostname: str,
                properties: dict[str, object]) -> TestSuite:
    suite = TestSuite(name)
    for key in sorted(properties):
        suite.add_property(key, visible(str(properties[key])))
    for case in cases:
        suite.add_testcase(case)
    suite.update_statistics()
    suite.time = _time(sum(float(case.time or 0) for case in cases))
    suite.timestamp = timestamp
    suite.hostname = hostname
    return suite


def _write_atomically(xml, path: pathlib.Path) -> None:
    """A reader never sees a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".junit-", suffix=".xml")
    os.close(fd)
    try:
        xml.write(tmp, pretty=True)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_suite(suite: TestSuite, path: pathlib.Path) -> None:
    _write_atomically(suite, path)


def write_suites(suites, out: pathlib.Path) -> JUnitXml:
    """Several suites under one <testsuites>, atomically (nightly CI: one suite per target)."""
    merged = JUnitXml()
    for suite in suites:
        merged.add_testsuite(suite)
    # the totals by hand: junitparser's update_statistics() also sets `skipped` on <testsuites>,
    # an attribute the Jenkins schema does not allow there
    merged.tests = sum(s.tests for s in suites)
    merged.failures = sum(s.failures for s in suites)
    merged.errors = sum(s.errors for s in suites)
    merged.time = _time(sum(s.time or 0 for s in suites))
    _write_atomically(merged, out)
    return merged
