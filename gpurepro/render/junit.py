"""JUnit output with junitparser (DESIGN.md's JUnit rules; valid against shared/schemas/junit-10.xsd).

One <testsuite> per run and target; environment facts as suite properties; nothing extra on <testcase>.
A testcase fails only when the observed outcome departs from the manifest's expectation.
"""
from __future__ import annotations

import os
import pathlib
import tempfile

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from .outcomes import Outcome, StepResult, Verdict

SYSTEM_OUT_LIMIT = 16_000


def visible(text: str) -> str:
    """Control characters shown as \\xNN escapes rather than dropped: the evidence stays readable."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t":
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _time(seconds: float | None) -> float:
    return round(seconds or 0.0, 3)


def build_suite(name: str, results: list[StepResult], *, timestamp: str, hostname: str,
                properties: dict[str, str], classname: str = "repros") -> TestSuite:
    suite = TestSuite(name)
    for key in sorted(properties):
        suite.add_property(key, visible(str(properties[key])))
    for result in results:
        case = TestCase(result.testcase_name, classname=classname,
                        time=_time((result.compile_seconds or 0) + (result.run_seconds or 0)))
        reason = visible(result.reason)
        if result.verdict is Verdict.INFRA:
            case.result = [Error(message=reason, type_=Outcome.INFRA_ERROR.value)]
        elif result.outcome is Outcome.SKIPPED:
            case.result = [Skipped(message=reason)]
        elif result.verdict is Verdict.DEPARTED:
            message = f"expected {result.expected}, observed {result.outcome.value}: {reason}"
            case.result = [Failure(message=message, type_=result.outcome.value)]
        tail = result.log_tail[-SYSTEM_OUT_LIMIT:]
        header = f"outcome: {result.outcome.value} ({result.verdict.value}; expected {result.expected or 'unknown'})\n"
        if result.reproduce:
            header += f"reproduce: {result.reproduce}\n"
        case.system_out = visible(header + tail)
        suite.add_testcase(case)
    suite.update_statistics()
    suite.time = _time(sum((r.compile_seconds or 0) + (r.run_seconds or 0) for r in results))
    suite.timestamp = timestamp
    suite.hostname = hostname
    return suite


def _write_atomically(xml, path: pathlib.Path) -> None:
    """A reader never sees a half-written file."""
    path = pathlib.Path(path)
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
    merged.update_statistics()
    # junitparser also counts `skipped` on <testsuites>, an attribute the Jenkins schema does not allow there
    merged._elem.attrib.pop("skipped", None)
    _write_atomically(merged, out)
    return merged


def merge(paths: list[pathlib.Path], out: pathlib.Path) -> JUnitXml:
    """Several runs' suites under one <testsuites> (runs from several hosts)."""
    suites = []
    for path in paths:
        loaded = JUnitXml.fromfile(str(path))
        suites.extend(loaded if isinstance(loaded, JUnitXml) else [loaded])
    return write_suites(suites, out)
