"""Terminal output with rich: each stage as it starts, each step the moment it is done, a table at the end."""
from __future__ import annotations

import os
import sys

from rich.console import Console as RichConsole
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


class Console:
    def __init__(self, out=None, err=None):
        self.out = RichConsole(file=out or sys.stdout, highlight=False, soft_wrap=True, width=_width(out or sys.stdout))
        self.err = RichConsole(file=err or sys.stderr, highlight=False, soft_wrap=True, width=_width(err or sys.stderr))

    def info(self, message: str) -> None:
        self.out.print(message, markup=False)

    def error(self, message: str) -> None:
        self.err.print(message, markup=False, style="bold red")

    def environment(self, facts) -> None:
        gpu = f"{facts.gpu.name} ({facts.gpu.arch})" if facts.gpu else "no GPU"
        values = facts.values
        self.info(f"{facts.backend}: {gpu}; nvcc {values.get('nvcc_version') or '?'}; "
                  f"CUTLASS {values.get('cutlass_version') or '?'}; FlashInfer {values.get('flashinfer_version') or '?'}")

    def stage(self, step: str, arch: str, stage: str) -> None:
        """A step entered a stage (copy in, compile, run, ...)."""
        self.out.print(f"  {step}[{arch}]: {stage}", markup=False, style="dim")

    def step_done(self, result: StepResult) -> None:
        self.out.print(f"  {escape(result.testcase_name)}: {styled(result.outcome.value, STYLE.get(result.outcome))} "
                       f"— {escape(result.reason)}", markup=True, highlight=False)

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
