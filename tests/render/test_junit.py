import pathlib
import xml.etree.ElementTree as ET

import pytest

from gpurepro.outcomes import CaseResult, Outcome, StepResult, Verdict
from gpurepro.render.junit import build_suite, kernel_testcase, step_testcase, visible, write_suite, write_suites

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema validates JUnit against the Jenkins schema")
SCHEMA = xmlschema.XMLSchema(str(pathlib.Path(__file__).parents[1] / "data" / "junit-10.xsd"))


def results() -> list[StepResult]:
    return [
        StepResult("step00", "sm_121a", Outcome.PASS, "matches reference", expected="pass", verdict=Verdict.MATCH,
                   compile_seconds=55.1234, run_seconds=0.5),
        StepResult("step01", "sm_121a", Outcome.PASS, "matches reference", expected="init_error",
                   verdict=Verdict.DEPARTED, reproduce="invoke repro step01 --arch sm_121a --backend docker",
                   log_tail="ok \x1b[31mred\x1b[0m \x00 done\n"),
        StepResult("step02", "sm_121a", Outcome.INFRA_ERROR, "container vllm-dev: exec failed", verdict=Verdict.INFRA),
        StepResult("step03", "sm_120a", Outcome.SKIPPED, "no image for sm_90 (binary has SASS sm_120a)",
                   expected="skipped", verdict=Verdict.MATCH),
        StepResult("step04", "sm_120a", Outcome.MISMATCH, "3 of 10 differ", expected="unknown", verdict=Verdict.NEW),
    ]


def write(tmp_path, items=None, host="host") -> pathlib.Path:
    cases = [step_testcase(r) for r in (items if items is not None else results())]
    suite = build_suite(f"repros@{host}", cases, timestamp="2026-11-22T09:00:00",
                        hostname=host, properties={"gpu_name": "NVIDIA H100", "nvcc_version": "13.0"})
    path = tmp_path / "junit.xml"
    write_suite(suite, path)
    return path


def test_valid_against_jenkins_schema(tmp_path):
    path = write(tmp_path)
    SCHEMA.validate(str(path))
    root = ET.parse(path).getroot()
    assert root.tag == "testsuite"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "1")
    assert root.get("hostname") == "host" and root.get("timestamp") and root.get("time")


def test_testcases_follow_the_rules(tmp_path):
    root = ET.parse(write(tmp_path)).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"step00[sm_121a]", "step01[sm_121a]", "step02[sm_121a]", "step03[sm_120a]", "step04[sm_120a]"}
    for case in cases.values():
        assert set(case.attrib) <= {"name", "classname", "time"}
        assert case.get("classname") == "repros"
        assert case.find("properties") is None
    failure = cases["step01[sm_121a]"].find("failure")
    assert failure.get("message") == "expected init_error, observed pass: matches reference"
    assert cases["step02[sm_121a]"].find("error") is not None
    assert cases["step03[sm_120a]"].find("skipped").get("message").startswith("no image for sm_90")
    assert cases["step04[sm_120a]"].find("failure") is None  # unknown expectation: news, not a failure
    out = cases["step01[sm_121a]"].find("system-out").text
    assert "\\x1b[31mred" in out and "\\x00" in out and "reproduce: invoke repro step01" in out
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["gpu_name"] == "NVIDIA H100"


def test_visible_keeps_newlines_and_escapes_controls():
    assert visible("a\tb\nc\x07\x7f\x9b") == "a\tb\nc\\x07\\x7f\\x9b"


def test_empty_run_is_valid(tmp_path):
    SCHEMA.validate(str(write(tmp_path, [])))


def test_several_suites_under_one_testsuites(tmp_path):
    suites = [build_suite(host, [step_testcase(r) for r in results()], timestamp="2026-11-22T09:00:00", hostname=host,
                          properties={}) for host in ("sm120-box", "sm121-box")]
    merged = write_suites(suites, tmp_path / "merged.xml")
    root = ET.parse(tmp_path / "merged.xml").getroot()
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 2
    assert merged.tests == 10 and root.get("failures") == "2" and root.get("errors") == "2"
    assert "skipped" not in root.attrib  # the Jenkins schema has no `skipped` on <testsuites>
    SCHEMA.validate(str(tmp_path / "merged.xml"))


def test_interrupted_step_is_an_error_not_a_failure(tmp_path):
    interrupted = StepResult("step05", "sm_120a", Outcome.INTERRUPTED, "interrupted during compile",
                             verdict=Verdict.INFRA)
    root = ET.parse(write(tmp_path, [interrupted])).getroot()
    error = root.find("testcase/error")
    assert error is not None and error.get("message") == "interrupted during compile"
    assert root.get("errors") == "1" and root.get("failures") == "0"


def test_kernel_cases_and_step_results_share_one_suite_builder(tmp_path):
    cases = [kernel_testcase(CaseResult("kernels.test_a", "test_ok", "passed", seconds=0.25)),
             kernel_testcase(CaseResult("kernels.test_a", "test_bad", "failed", "assert 1 == 2", "tb")),
             kernel_testcase(CaseResult("kernels.session", "pytest", "error", "torch missing", infra=True)),
             kernel_testcase(CaseResult("kernels.test_b", "test_gpu", "skipped", "no CUDA device"))]
    suite = build_suite("kernels@host", cases, timestamp="2026-11-22T09:00:00", hostname="host", properties={})
    write_suite(suite, tmp_path / "k.xml")
    SCHEMA.validate(str(tmp_path / "k.xml"))
    root = ET.parse(tmp_path / "k.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("4", "1", "1", "1")
    assert root.find("testcase[@name='pytest']/error").get("type") == "infra_error"
