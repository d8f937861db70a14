"""The outcome vocabulary (DESIGN.md) and how an observed outcome compares with an expectation."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


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

    def __str__(self) -> str:  # so f-strings and YAML dumps show the bare word
        return self.value


OUTCOMES = [o.value for o in Outcome]
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
    if observed is Outcome.INFRA_ERROR:
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

    @property
    def testcase_name(self) -> str:
        return f"{self.step}[{self.arch}]"

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
        return cls(**data)
