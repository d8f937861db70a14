"""The outcome vocabulary (docs/contracts.md), how an observation compares with its expectation, and the one
exit-code rule every kind of run shares: a repro step and a kernel test case both end in a Verdict."""
from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from .errors import EXIT_DEPARTED, EXIT_INFRA, EXIT_OK


class Outcome(str, enum.Enum):
    PASS = "pass"
    MISMATCH = "mismatch"
    INIT_ERROR = "init_error"
    CAN_IMPLEMENT_ERROR = "can_implement_error"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    INFRA_ERROR = "infra_error"
    COMPILED = "compiled"  # --compile-only: the compile succeeded and nothing ran; judged by compile.<arch>
    INTERRUPTED = "interrupted"  # the run was stopped before this step's outcome was known

    def __str__(self) -> str:  # so f-strings and YAML dumps show the bare word
        return self.value


# what a program or the manifest may name; `compiled` and `interrupted` are the tool's own words
OUTCOMES = [o.value for o in Outcome if o not in (Outcome.COMPILED, Outcome.INTERRUPTED)]
UNKNOWN = "unknown"  # an expectation nobody has measured yet: any observation is news, not a failure
EXPECTATIONS = OUTCOMES + [UNKNOWN]

# compile-only expectations recorded in the manifest per compile target
COMPILE_OK = "ok"
COMPILE_EXPECTATIONS = [COMPILE_OK, Outcome.COMPILE_ERROR.value, UNKNOWN]


class Verdict(str, enum.Enum):
    """How one observed outcome relates to the manifest's expectation."""

    MATCH = "match"        # observed what was expected
    DEPARTED = "departed"  # observed something else: a regression or a fix, either is news
    NEW = "new"            # nothing was expected (unknown): recorded, not judged
    NOT_RUN = "not_run"    # skipped: nothing observed to judge
    INFRA = "infra"        # the tool or its environment failed; says nothing about the repro

    def __str__(self) -> str:
        return self.value


def judge(observed: Outcome, expected: str | None) -> Verdict:
    if observed in (Outcome.INFRA_ERROR, Outcome.INTERRUPTED):
        return Verdict.INFRA
    if expected is None or expected == UNKNOWN:
        return Verdict.NOT_RUN if observed is Outcome.SKIPPED else Verdict.NEW
    if observed.value == expected:
        return Verdict.MATCH
    if observed is Outcome.SKIPPED:
        return Verdict.NOT_RUN
    return Verdict.DEPARTED


@dataclass
class StepResult:
    """What one step did on one target: the unit of result.json, JUnit and the summary."""

    step: str
    arch: str                      # compile target, e.g. sm_120a
    outcome: Outcome
    reason: str
    expected: str | None = None    # manifest expectation used for the verdict
    expected_key: str | None = None  # which manifest entry it came from, e.g. expect.sm_90
    verdict: Verdict = Verdict.NEW
    device_arch: str | None = None  # sm_90 etc.; None without a GPU
    exit_code: int | None = None
    signal: str | None = None
    compile_seconds: float | None = None
    run_seconds: float | None = None
    events: list[dict] = field(default_factory=list)
    patches: list[dict] = field(default_factory=list)  # CUTLASS patches applied: name, sha256
    log_tail: str = ""
    reproduce: str = ""
    cache: dict | None = None  # the compile's action-cache status: {"status": hit|miss|off, "key": sha256}
    compile_rss_bytes: int | None = None  # the compiler's peak resident memory, where measured
    toolchain: str | None = None  # the named toolchain it was compiled with (None: the configured image)

    @property
    def dirname(self) -> str:
        """Its directory under the run's steps/: one per step, or per step and toolchain in a matrix run."""
        return self.step if not self.toolchain else f"{self.step}@{self.toolchain}"

    @property
    def testcase_name(self) -> str:
        return f"{self.step}[{self.arch}]" if not self.toolchain else f"{self.step}[{self.arch},{self.toolchain}]"

    def to_json(self) -> dict:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["verdict"] = self.verdict.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> "StepResult":
        data = dict(data)
        data["outcome"] = Outcome(data["outcome"])
        data["verdict"] = Verdict(data.get("verdict", Verdict.NEW.value))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# pytest's words for a test's end, as kernels.test records them
CASE_PASSED, CASE_FAILED, CASE_ERROR, CASE_SKIPPED = "passed", "failed", "error", "skipped"


@dataclass
class CaseResult:
    """One kernel test (a JUnit testcase) as the consumers see it."""

    classname: str  # kernels.<module>
    name: str  # test_x[cpu], or Class.test_x[cpu]
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    detail: str = ""  # the traceback / skip location
    seconds: float = 0.0
    output: str = ""
    infra: bool = False  # the suite itself could not run (a session-level case): no verdict on the tests

    @property
    def id(self) -> str:
        return f"{self.classname}::{self.name}"

    @property
    def verdict(self) -> Verdict:
        if self.infra:
            return Verdict.INFRA
        return {CASE_PASSED: Verdict.MATCH, CASE_SKIPPED: Verdict.NOT_RUN}.get(self.outcome, Verdict.DEPARTED)


def exit_code_for(verdicts: Iterable[Verdict]) -> int:
    """docs/contracts.md's exit codes: 3 when evidence is missing, else 1 when anything departed, else 0."""
    seen = set(verdicts)
    if Verdict.INFRA in seen:
        return EXIT_INFRA
    if Verdict.DEPARTED in seen:
        return EXIT_DEPARTED
    return EXIT_OK
