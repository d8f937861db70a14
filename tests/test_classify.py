import json

import pytest

from gpurepro.classify import ExecResult, classify_compile, classify_run, parse_events
from gpurepro.outcomes import Outcome


def marker(**event) -> str:
    return "@@repro " + json.dumps(event)


def run(output: str, code: int = 0, timed_out: bool = False) -> ExecResult:
    return ExecResult(argv=["./step"], exit_code=code, output=output, seconds=1.0, timed_out=timed_out, timeout_s=120)


CONFIG = marker(event="config", schedule="KernelPtrArrayTmaWarpSpecializedPingpong", tile=[128, 128, 128])
OK = lambda stage: marker(event="status", stage=stage, status="kSuccess", cuda_error="cudaSuccess")  # noqa: E731

CASES = {
    "pass": (
        "\n".join([CONFIG, OK("can_implement"), OK("initialize"), OK("run"),
                   marker(event="check", max_abs_err=0.0, mismatches=0, checked=4096),
                   marker(event="result", outcome="pass")]), 0,
        Outcome.PASS, "4096 elements"),
    "mismatch": (
        "\n".join([CONFIG, OK("can_implement"), OK("initialize"), OK("run"),
                   marker(event="check", max_abs_err=3.5, mismatches=12, checked=4096),
                   marker(event="result", outcome="mismatch")]), 1,
        Outcome.MISMATCH, "12 of 4096 elements differ (max abs err 3.5)"),
    "init_error (seed's step01 on SM121)": (
        "\n".join([CONFIG, OK("can_implement"), OK("get_workspace_size"),
                   marker(event="status", stage="initialize", status="Error Internal", cuda_error="cudaErrorInvalidValue"),
                   marker(event="result", outcome="init_error")]), 2,
        Outcome.INIT_ERROR, "initialize(): Error Internal; cudaGetLastError: cudaErrorInvalidValue"),
    "can_implement_error": (
        "\n".join([CONFIG, marker(event="status", stage="can_implement", status="Error Misaligned Operand",
                                  cuda_error="cudaSuccess")]), 2,
        Outcome.CAN_IMPLEMENT_ERROR, "can_implement(): Error Misaligned Operand"),
    "runtime_error from run status": (
        "\n".join([CONFIG, OK("can_implement"), OK("initialize"),
                   marker(event="status", stage="run", status="Error Internal", cuda_error="cudaErrorIllegalAddress")]), 3,
        Outcome.RUNTIME_ERROR, "run(): Error Internal; cudaGetLastError: cudaErrorIllegalAddress"),
    # measured on an H100: an SM120 binary on the H100 passes can_implement, then aborts inside initialize()
    "abort via docker's timeout wrapper (128+6)": (
        "\n".join([CONFIG, OK("can_implement"), "Failed to initialize the TMA descriptor 1"]), 134,
        Outcome.RUNTIME_ERROR, "killed by SIGABRT: Failed to initialize the TMA descriptor 1"),
    "abort on the host backend (-6)": (
        "terminate called after throwing an instance of 'std::runtime_error'", -6,
        Outcome.RUNTIME_ERROR, "killed by SIGABRT: terminate called"),
    "segfault without text": ("", -11, Outcome.RUNTIME_ERROR, "killed by SIGSEGV"),
    "declared skipped": (marker(event="result", outcome="skipped"), 0, Outcome.SKIPPED, "program reported skipped"),
    # no markers at all
    "plain PASS": ("Running grouped GEMM\nPASS\n", 0, Outcome.PASS, "PASS"),
    "plain init failure": ("CUTLASS initialize() failed: Error Internal\n", 1, Outcome.INIT_ERROR, "Error Internal"),
    "plain can_implement failure": ("can_implement failed: Error Invalid Problem\n", 1, Outcome.CAN_IMPLEMENT_ERROR,
                                    "can_implement failed"),
    "plain CUDA error": ("CUDA error: an illegal memory access was encountered\n", 1, Outcome.RUNTIME_ERROR,
                         "illegal memory access"),
    "plain mismatch": ("Verification: 12 mismatches\nFAIL\n", 1, Outcome.MISMATCH, "mismatches"),
    "silent success": ("", 0, Outcome.PASS, "exit code 0"),
    "silent failure": ("", 5, Outcome.RUNTIME_ERROR, "exit code 5"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_run_outcomes(name):
    output, code, outcome, reason_part = CASES[name]
    result = classify_run(run(output, code))
    assert result.outcome is outcome, result.reason
    assert reason_part in result.reason
    assert "\n" not in result.reason


def test_timeout():
    result = classify_run(run(CONFIG + "\n", 124, timed_out=True))
    assert result.outcome is Outcome.TIMEOUT and "120 s" in result.reason
    assert result.events[0]["event"] == "config"


def test_reported_pass_with_failing_exit_is_not_a_pass():
    result = classify_run(run(marker(event="result", outcome="pass"), 1))
    assert result.outcome is Outcome.RUNTIME_ERROR


def test_failed_status_beats_a_declared_pass():
    output = "\n".join([marker(event="status", stage="initialize", status="kErrorInternal"),
                        marker(event="result", outcome="pass")])
    assert classify_run(run(output, 0)).outcome is Outcome.INIT_ERROR


def test_markers_anywhere_on_a_line_and_invalid_ones_kept():
    events = parse_events("prefix @@repro {\"event\":\"config\"}\n@@repro {not json}\n@@repro [1,2]\nplain text")
    assert [e["event"] for e in events] == ["config", "invalid", "invalid"]
    assert events[1]["raw"] == "{not json}"


def test_every_outcome_is_reachable():
    seen = {case[2] for case in CASES.values()} | {Outcome.TIMEOUT}
    seen |= {classify_compile(ExecResult(["nvcc"], 1, "x.cu(1): error: boom")).outcome}
    # infra_error comes from exceptions (suites.repro.outcome_from_exception); compiled and interrupted are the
    # repro suite's own words (--compile-only, an interrupt), tested in tests/suites/test_repro.py
    assert seen | {Outcome.INFRA_ERROR, Outcome.COMPILED, Outcome.INTERRUPTED} == set(Outcome)


# --- compile --------------------------------------------------------------------------------------
NVCC_STATIC_ASSERT = """/workspace/flashinfer/3rdparty/cutlass/include/cutlass/detail/sm100_blockscaled_layout.hpp(62): error: static assertion failed with "Incorrect SfVectorSize for MX_F4F6F8 is deduced."
    static_assert(cute::dependent_false<T>, "Incorrect SfVectorSize for MX_F4F6F8 is deduced.");
    ^
1 error detected in the compilation of "step06.cu".
"""


def test_compile_static_assert_reason():
    result = classify_compile(ExecResult(["nvcc"], 2, NVCC_STATIC_ASSERT))
    assert result.outcome is Outcome.COMPILE_ERROR
    assert result.reason == "static_assert: Incorrect SfVectorSize for MX_F4F6F8 is deduced."


def test_compile_first_error_line():
    text = "step.cu(10): warning #177-D: unused\nstep.cu(12): error: identifier \"Foo\" is undefined\nmore\n"
    result = classify_compile(ExecResult(["nvcc"], 2, text))
    assert result.reason == 'step.cu(12): error: identifier "Foo" is undefined'


def test_compile_success_and_timeout():
    assert classify_compile(ExecResult(["nvcc"], 0, "")) is None
    result = classify_compile(ExecResult(["nvcc"], 124, "", timed_out=True, timeout_s=900))
    assert result.outcome is Outcome.TIMEOUT and "900 s" in result.reason
