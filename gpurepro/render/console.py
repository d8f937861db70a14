"""Terminal output with rich: each stage as it starts, each step the moment it is done, a table at the end."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass

from rich.console import Console as RichConsole
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ..outcomes import Outcome, StepResult, Verdict

STYLE = {
    Outcome.PASS: "green", Outcome.SKIPPED: "yellow", Outcome.INFRA_ERROR: "magenta",
    Outcome.COMPILE_ERROR: "red", Outcome.MISMATCH: "red", Outcome.INIT_ERROR: "red",
    Outcome.CAN_IMPLEMENT_ERROR: "red", Outcome.RUNTIME_ERROR: "red", Outcome.TIMEOUT: "red",
    Outcome.COMPILED: "green", Outcome.INTERRUPTED: "magenta",
}
VERDICT_STYLE = {Verdict.MATCH: "green", Verdict.DEPARTED: "bold red", Verdict.INFRA: "magenta",
                 Verdict.NEW: "cyan", Verdict.NOT_RUN: "yellow"}


def _width(stream) -> int | None:
    """A terminal's own width; for logs and CI (no terminal) wide enough that tables do not fold every word."""
    try:
        if stream.isatty():
            return None
    except (AttributeError, ValueError):
        pass
    try:
        return max(80, int(os.environ["COLUMNS"]))
    except (KeyError, ValueError):
        return 160


def styled(text: str, style: str | None) -> str:
    """Rich markup for `text` in `style`; recorded text is escaped, and no style means no tag."""
    return f"[{style}]{escape(text)}[/]" if style else escape(text)


HEARTBEAT_ENV = "GPUREPRO_HEARTBEAT_S"
BUSY_STAGES = ("compiling", "running", "checking arch")  # long enough to deserve a heartbeat


@dataclass
class StepLine:
    """One step in the progress display."""

    step: str
    arch: str
    stage: str = "queued"
    since: float = 0.0
    expected: float | None = None  # seconds, from the last measurement or the manifest's notes
    result: str = ""


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} s"


class Console:
    """Where a run talks to its user. In a terminal: a live table of the steps (stage, elapsed, expected);
    without one (CI logs): a line per stage change, a heartbeat line per busy step every 30 s
    ($GPUREPRO_HEARTBEAT_S), and each step's result line the moment it is known."""

    def __init__(self, out=None, err=None):
        self.out = RichConsole(file=out or sys.stdout, highlight=False, soft_wrap=True, width=_width(out or sys.stdout))
        self.err = RichConsole(file=err or sys.stderr, highlight=False, soft_wrap=True, width=_width(err or sys.stderr))
        self._steps: dict[tuple[str, str], StepLine] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._stop = threading.Event()
        try:
            self.heartbeat_s = max(0.2, float(os.environ.get(HEARTBEAT_ENV, "30")))
        except ValueError:
            self.heartbeat_s = 30.0

    # --- progress ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def steps(self, lines: list[StepLine]):
        """Show the steps' progress for the duration of the block."""
        now = time.monotonic()
        with self._lock:
            self._steps = {(line.step, line.arch): line for line in lines}
            for line in lines:
                line.since = now
        self._stop.clear()
        if self.out.is_terminal:
            self._live = Live(self._table(), console=self.out, refresh_per_second=2, transient=True,
                              get_renderable=self._table)
            self._live.start()
            ticker = None
        else:
            ticker = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
            ticker.start()
        try:
            yield
        finally:
            self._stop.set()
            if self._live is not None:
                self._live.stop()
                self._live = None
            if ticker is not None:
                ticker.join(timeout=5)

    def _table(self) -> Table:
        table = Table(box=None, show_header=True, header_style="dim")
        for column in ("step", "stage", "elapsed", "expected", "result"):
            table.add_column(column)
        now = time.monotonic()
        with self._lock:
            lines = list(self._steps.values())
        for line in lines:
            elapsed = "" if line.stage in ("queued", "done") else _seconds(now - line.since)
            table.add_row(escape(f"{line.step}[{line.arch}]"), escape(line.stage), elapsed,
                          _seconds(line.expected), escape(line.result))
        return table

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            now = time.monotonic()
            with self._lock:
                busy = [line for line in self._steps.values() if line.stage.startswith(BUSY_STAGES)]
            for line in busy:
                expected = f" (expected ~{_seconds(line.expected)})" if line.expected else ""
                self.out.print(f"  {line.step}[{line.arch}]: still {line.stage}, {_seconds(now - line.since)} "
                               f"elapsed{expected}", markup=False)

    def stage(self, step: str, arch: str, stage: str, expected: float | None = None) -> None:
        """A step entered a stage (copying in, compiling, running, collecting)."""
        with self._lock:
            line = self._steps.setdefault((step, arch), StepLine(step, arch))
            line.stage, line.since = stage, time.monotonic()
            if expected is not None:
                line.expected = expected
            expected = line.expected if stage.startswith(BUSY_STAGES) else None
        if self._live is None:
            note = f" (expected ~{_seconds(expected)})" if expected else ""
            self.out.print(f"  {step}[{arch}]: {stage}{note}", markup=False, style="dim")

    def info(self, message: str) -> None:
        self.out.print(message, markup=False)

    def error(self, message: str) -> None:
        self.err.print(message, markup=False, style="bold red")

    def environment(self, facts) -> None:
        gpu = f"{facts.gpu.name} ({facts.gpu.arch})" if facts.gpu else "no GPU"
        values = facts.values
        self.info(f"{facts.backend}: {gpu}; nvcc {values.get('nvcc_version') or '?'}; "
                  f"CUTLASS {values.get('cutlass_version') or '?'}; FlashInfer {values.get('flashinfer_version') or '?'}")

    def step_done(self, result: StepResult) -> None:
        with self._lock:
            line = self._steps.get((result.step, result.arch))
            if line is not None:
                line.stage, line.result = "done", f"{result.outcome.value} ({result.verdict.value})"
        facts = [f"compile {result.compile_seconds:.1f} s" if result.compile_seconds is not None else "",
                 f"cache {result.cache['status']}" if result.cache else ""]
        facts_text = ", ".join(f for f in facts if f)
        self.out.print(f"  {escape(result.testcase_name)}: {styled(result.outcome.value, STYLE.get(result.outcome))} "
                       f"({styled(result.verdict.value, VERDICT_STYLE.get(result.verdict))}) — {escape(result.reason)}"
                       + (f" [dim]\\[{escape(facts_text)}][/]" if facts_text else ""), markup=True, highlight=False)

    def table(self, title: str, columns, rows, *, flag: int | None = None) -> None:
        """Every table of the tool's commands: cells are text (escaped, never markup); a row whose `flag`
        column holds something is shown in bold red."""
        table = Table(title=escape(title))
        for column in columns:
            table.add_column(escape(column), overflow="fold")
        for row in rows:
            cells = [escape("" if cell is None else str(cell)) for cell in row]
            if flag is not None and row[flag]:
                cells[flag] = f"[bold red]{cells[flag]}[/]"
            table.add_row(*cells)
        self.out.print(table)

    def results(self, results: list[StepResult], run) -> None:
        table = Table(title=f"run {run.run_id}", show_lines=False)
        for column in ("step", "arch", "expected", "observed", "verdict", "reason"):
            table.add_column(column, overflow="fold")
        for r in results:
            table.add_row(escape(r.step), escape(r.arch), escape(r.expected or "unknown"),
                          styled(r.outcome.value, STYLE.get(r.outcome)),
                          styled(r.verdict.value, VERDICT_STYLE.get(r.verdict)), escape(r.reason))
        self.out.print(table)
        for r in results:
            if r.verdict in (Verdict.DEPARTED, Verdict.INFRA):
                self.out.print(f"reproduce {r.testcase_name}: {r.reproduce}", markup=False)
        from .markdown import counts_line

        self.out.print(counts_line(results), markup=False)
        self.out.print(f"report: {(run.path / 'index.html').resolve().as_uri()}", markup=False)

    def flip_table(self, rows, first, results) -> None:
        archs = sorted({arch for row in rows for arch in row.expected})
        device = next((r.device_arch for r in results if r.device_arch), None)
        table = Table(title=f"bisect ({'device ' + device if device else 'no GPU'})")
        for column in ("step", "change", "observed", *[f"expect {a}" for a in archs], "flip"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(escape(row.step), escape(row.change), escape(row.observed),
                          *[escape(row.expected.get(a, "-")) for a in archs], "[bold red]flip[/]" if row.flipped else "")
        self.out.print(table)
        if first is None:
            self.out.print("no flip: every step observed the same outcome", markup=False)
        else:
            self.out.print(f"first flip: {first.step} ({first.observed}) — {first.change}", markup=False)

    def layout_diff(self, step_a, step_b, rows, paths) -> None:
        table = Table(title=f"layouts: {step_a} (A) vs {step_b} (B)")
        for column in ("name", "status", "fields", "first differing byte offsets", "A type", "B type"):
            table.add_column(column, overflow="fold")
        for row in rows:
            style = "green" if row.status == "same" else "bold red"
            table.add_row(escape(str(row.name)), f"[{style}]{row.status}[/]", escape(", ".join(row.fields)),
                          " ".join(str(o) for o in row.first_offsets),
                          escape(str((row.a or {}).get("type", "-"))), escape(str((row.b or {}).get("type", "-"))))
        self.out.print(table)
        self.out.print(f"A: {paths[0]}\nB: {paths[1]}", markup=False)
        differing = [r.name for r in rows if r.status != "same"]
        self.out.print(f"{len(differing)} of {len(rows)} layouts differ" + (f": {', '.join(map(str, differing))}" if differing else ""),
                       markup=False)
