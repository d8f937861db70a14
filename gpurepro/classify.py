"""Turn what a compile and a run produced into one outcome and a one-line reason taken from evidence.

Evidence, strongest first: the program's `@@repro` records (docs/contracts.md, "Output protocol"), then the way
the process ended (timeout, signal, exit code), then its plain text. Programs that print no markers are
still classified, from exit codes and text alone.
"""
from __future__ import annotations

import json
import re
import signal as signal_module
from dataclasses import dataclass, field

from .outcomes import OUTCOMES, Outcome

MARKER = "@@repro "
SUCCESS_STATUSES = {"kSuccess", "Success", "success", "ok"}
STAGE_OUTCOME = {
    "can_implement": Outcome.CAN_IMPLEMENT_ERROR,
    "get_workspace_size": Outcome.INIT_ERROR,
    "initialize": Outcome.INIT_ERROR,
    "run": Outcome.RUNTIME_ERROR,
}


@dataclass
class ExecResult:
    """How one command ended, whichever runner ran it."""

    argv: list[str]
    exit_code: int | None
    output: str
    seconds: float = 0.0
    timed_out: bool = False
    timeout_s: float | None = None
    output_bytes: int = 0            # everything the command wrote, though `output` keeps head and tail only
    output_truncated: bool = False   # True when the middle was dropped (the runner's run.log_cap_bytes)

    @property
    def signal(self) -> str | None:
        """Name of the signal that ended the process, from either convention (-N or 128+N)."""
        code = self.exit_code
        if code is None or self.timed_out:
            return None
        number = -code if code < 0 else code - 128 if 128 < code <= 128 + 64 else None
        if number is None:
            return None
        try:
            return signal_module.Signals(number).name
        except ValueError:
            return f"signal {number}"


@dataclass
class Classification:
    outcome: Outcome
    reason: str
    events: list[dict] = field(default_factory=list)


def parse_events(text: str) -> list[dict]:
    """Every `@@repro {json}` line; a malformed one is kept as an `invalid` event, not dropped."""
    events = []
    for line in text.splitlines():
        start = line.find(MARKER)
        if start < 0:
            continue
        payload = line[start + len(MARKER):].strip()
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as exc:
            events.append({"event": "invalid", "raw": payload[:500], "error": exc.msg})
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
        else:
            events.append({"event": "invalid", "raw": payload[:500], "error": "not an object with an 'event'"})
    return events


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- compile ----------------------------------------------------------------------------------
STATIC_ASSERT_RE = re.compile(r'static assertion failed(?: with "?(?P<msg>[^"\n]*)"?)?')
ERROR_LINE_RE = re.compile(r"(?:\berror\b\s*(?:#\w+(?:-\w)?)?\s*:|: error:|fatal error)", re.IGNORECASE)


def first_compile_error(text: str) -> str:
    match = STATIC_ASSERT_RE.search(text)
    if match:
        msg = match.group("msg")
        return one_line(f"static_assert: {msg}" if msg else "static assertion failed")
    for line in text.splitlines():
        if ERROR_LINE_RE.search(line) and MARKER not in line:
            return one_line(line.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else "compiler failed without output"


def classify_compile(result: ExecResult) -> Classification | None:
    """None when the compile succeeded; otherwise the outcome that ends the step."""
    if result.timed_out:
        return Classification(Outcome.TIMEOUT, f"compile timed out after {result.timeout_s:g} s")
    if result.exit_code == 0:
        return None
    return Classification(Outcome.COMPILE_ERROR, first_compile_error(result.output))


# --- run --------------------------------------------------------------------------------------
TEXT_RULES: list[tuple[re.Pattern, Outcome]] = [
    (re.compile(r"initiali[sz]e\(\)?[^\n]*?(Error[ \w]*|failed)", re.IGNORECASE), Outcome.INIT_ERROR),
    (re.compile(r"can_implement\(?\)?[^\n]*?(Error[ \w]*|failed|not supported)", re.IGNORECASE),
     Outcome.CAN_IMPLEMENT_ERROR),
    (re.compile(r"(CUDA error|cudaError\w+|an illegal memory access|unspecified launch failure)[^\n]*",
                re.IGNORECASE), Outcome.RUNTIME_ERROR),
    (re.compile(r"\b(mismatch(es)?|FAILED?)\b[^\n]*", re.IGNORECASE), Outcome.MISMATCH),
]
PASS_RE = re.compile(r"^\s*(PASS(ED)?|OK|SUCCESS)\b", re.IGNORECASE | re.MULTILINE)
ERRORISH_RE = re.compile(r"(error|fail|abort|assert|terminate|exception)", re.IGNORECASE)


def _failed_status(events: list[dict]) -> dict | None:
    for event in events:
        if event.get("event") == "status" and event.get("status") not in SUCCESS_STATUSES:
            return event
    return None


def _status_reason(event: dict) -> str:
    reason = f"{event.get('stage', '?')}(): {event.get('status', '?')}"
    cuda = event.get("cuda_error")
    if cuda and cuda not in ("cudaSuccess", "no error"):
        reason += f"; cudaGetLastError: {cuda}"
    return reason


def _check_reason(event: dict) -> str:
    return (f"{event.get('mismatches', '?')} of {event.get('checked', '?')} elements differ "
            f"(max abs err {event.get('max_abs_err', '?')})")


def _last_errorish_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if ERRORISH_RE.search(line) and MARKER not in line:
            return line.strip()
    return None


def classify_run(result: ExecResult) -> Classification:
    events = parse_events(result.output)
    if result.timed_out:
        return Classification(Outcome.TIMEOUT, f"no exit within {result.timeout_s:g} s", events)

    signal_name = result.signal
    if signal_name:
        detail = _last_errorish_line(result.output)
        failed = _failed_status(events)
        reason = f"killed by {signal_name}"
        if detail:
            reason += f": {detail}"
        elif failed:
            reason += f" after {_status_reason(failed)}"
        return Classification(Outcome.RUNTIME_ERROR, one_line(reason), events)

    failed = _failed_status(events)
    checks = [e for e in events if e.get("event") == "check"]
    declared = next((e.get("outcome") for e in reversed(events) if e.get("event") == "result"), None)

    if failed is not None:
        outcome = STAGE_OUTCOME.get(failed.get("stage"), Outcome.RUNTIME_ERROR)
        return Classification(outcome, one_line(_status_reason(failed)), events)
    if checks and _as_int(checks[-1].get("mismatches")) not in (0, None):
        return Classification(Outcome.MISMATCH, one_line(_check_reason(checks[-1])), events)
    if declared in OUTCOMES:
        outcome = Outcome(declared)
        if outcome is Outcome.PASS and result.exit_code not in (0, None):
            return Classification(Outcome.RUNTIME_ERROR,
                                  f"exit code {result.exit_code} after reporting pass", events)
        reason = _check_reason(checks[-1]) if checks else f"program reported {declared}"
        if outcome is Outcome.PASS and checks:
            reason = f"matches reference: {checks[-1].get('checked', '?')} elements, max abs err {checks[-1].get('max_abs_err', '?')}"
        return Classification(outcome, one_line(reason), events)

    # no decisive markers: plain text and exit code
    for pattern, outcome in TEXT_RULES:
        match = pattern.search(result.output)
        if match and (outcome is not Outcome.MISMATCH or result.exit_code != 0):
            return Classification(outcome, one_line(_line_at(result.output, match.start())), events)
    if result.exit_code == 0:
        found = PASS_RE.search(result.output)
        return Classification(Outcome.PASS, one_line(found.group(0).strip()) if found else "exit code 0", events)
    detail = _last_errorish_line(result.output)
    reason = f"exit code {result.exit_code}" + (f": {detail}" if detail else "")
    return Classification(Outcome.RUNTIME_ERROR, one_line(reason), events)


def _line_at(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return text[start:end if end >= 0 else len(text)].strip()


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
