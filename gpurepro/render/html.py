"""index.html: the run as one self-contained page (inline CSS, no scripts, nothing fetched).

Built from what the run directory holds (run.json, steps/<step>/{result.json, *.log, *.cu, layout.json}),
so it renders the same from a bundle on another machine; the manifest, when given, adds each step's
change and parent. The page answers "what changed and why did it fail": the matrix shows steps x compile
targets coloured by outcome with the expectation beside each result; below it each step with its change,
its source diff against its parent, its config/preflight records as tables, the compile log with repeated
diagnostics folded and the first error on top, the other logs and the layout diff. Departed and failed
steps are open, the rest folded. A Content-Security-Policy meta tag forbids the browser to load anything.

Two more pages share the style: `compare.html` (an old run beside a new one: a bundle and its replay) and
a nightly directory's `index.html` (steps x targets, a departed step's first run beside its rerun).
"""
from __future__ import annotations

import dataclasses
import html
import json
import pathlib
import re
from dataclasses import dataclass, field

from ..chain import changed_lines, diff_layouts
from ..classify import first_compile_error
from ..run.directory import RUN_JSON, atomic_write
from ..run.record import RunRecord

INDEX = "index.html"
COMPARE = "compare.html"
LOG_LIMIT = 256 * 1024  # per log shown; the whole file stays in the run directory, linked
FOLD_READ_LIMIT = 16 * 1024 * 1024  # compile logs are folded from up to this much (their tail); folding shrinks them
LOG_NAMES = ("patch.log", "compile.log", "cuobjdump.log", "run.log")
COLOURS = {
    "pass": "#1a7f37", "skipped": "#9a6700", "infra_error": "#8250df", "compile_error": "#b62324",
    "mismatch": "#d1242f", "init_error": "#bc4c00", "can_implement_error": "#a40e26", "runtime_error": "#82071e",
    "timeout": "#6e7781", "compiled": "#2da44e", "interrupted": "#57606a",
}
DIFF_ADD_BG, DIFF_DEL_BG = "#dafbe1", "#ffebe9"  # a test looks for these on screen: the diff is expanded
CALM_OUTCOMES = ("pass", "compiled", "skipped")
OPEN_VERDICTS = ("departed", "infra")
RECORD_EVENTS = ("config", "preflight", "device", "status", "check")  # shown as tables; layout has its own
CLASS_COLOURS = {"changed": "#cf222e", "flaky": "#bf8700", "infra": "#8250df", "new": "#0969da",
                 "match": "#1a7f37", "not_run": "#9a6700"}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f6f8fa}.cell{min-width:170px}.outcome{display:inline-block;color:#fff;border-radius:4px;padding:1px 7px;font-weight:600}
.expect{color:#57606a;font-size:12px}.verdict{font-size:12px;font-weight:600}.v-departed{color:#cf222e}.v-infra{color:#8250df}
.v-match{color:#1a7f37}.v-new{color:#0969da}.v-not_run{color:#9a6700}.reason{font-size:12px;max-width:460px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:480px;font-size:12px;white-space:pre-wrap;word-break:break-all}
details{margin:4px 0}summary{cursor:pointer}.status-complete{color:#1a7f37}.status-failed,.status-interrupted{color:#cf222e}
code{background:#f6f8fa;padding:0 3px}.muted{color:#57606a}.change{font-size:12px;color:#57606a;max-width:320px}
.step{border:1px solid #d0d7de;border-radius:6px;padding:2px 10px;margin:8px 0}
.step.s-departed,.step.s-failed{border-left:4px solid #cf222e}.step.s-infra{border-left:4px solid #8250df}
.body{margin-left:18px}.facts{color:#1f2328}
.records{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.records table{font-size:12px}
.records td,.records th{padding:2px 6px}.bad{background:#ffebe9;color:#a40e26;font-weight:600}
.diff{padding:0;white-space:pre}.diff span{display:block;padding:0 8px}
.d-add{background:""" + DIFF_ADD_BG + """}.d-del{background:""" + DIFF_DEL_BG + """}.d-hunk{background:#ddf4ff;color:#0550ae}
.d-file{font-weight:600}
.first-error{border:1px solid #ff8182;background:#fff5f5;border-radius:6px;padding:4px 10px;margin:6px 0}
.first-error pre{background:#fff}.log pre{margin:0 0 2px}.diag-error{color:#a40e26;font-weight:600}
.fold>summary{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;background:#fff8c5;padding:2px 6px}
.count{display:inline-block;background:#57606a;color:#fff;border-radius:9px;padding:0 7px;font-size:11px;font-weight:600}
.side{display:grid;grid-template-columns:1fr 1fr;gap:12px}.side>div{min-width:0}
.differs{background:#fff8c5}.changed-row td{background:#fff5f5}
.pair{display:flex;gap:6px;align-items:center}.arrow{color:#57606a}
.cls{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600;color:#fff}
""" + "".join(f".o-{name}{{background:{colour}}}" for name, colour in COLOURS.items()) \
    + "".join(f".c-{name}{{background:{colour}}}" for name, colour in CLASS_COLOURS.items())
CSP = "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _visible(text: str) -> str:
    # control characters made visible (as in JUnit), except newlines and tabs
    return "".join(c if c in "\n\t" or c >= " " else f"\\x{ord(c):02x}" for c in text)


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_tail(path: pathlib.Path, limit: int) -> tuple[str, bool]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size > limit:
            handle.seek(size - limit)
        data = handle.read(limit)
    return _visible(data.decode("utf-8", errors="replace")), size > limit


def _log(path: pathlib.Path) -> tuple[str, bool]:
    return _read_tail(path, LOG_LIMIT)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', CSP,
                      f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>", *body, "</body></html>", ""])


def _badge(outcome) -> str:
    return f'<span class="outcome o-{_e(outcome)}">{_e(outcome)}</span>' if outcome else ""


def _verdict(verdict) -> str:
    return f'<span class="verdict v-{_e(verdict)}">{_e(verdict)}</span>' if verdict else ""


def _seconds(value) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


# --- rows ------------------------------------------------------------------------------------------------
def _step_rows(run_path: pathlib.Path, record: RunRecord) -> list[dict]:
    """One dict per step: run.json's summary merged with the step's result.json when it is there."""
    rows = []
    for entry in record.steps:
        result = _read_json(run_path / "steps" / entry.dirname / "result.json") or {}
        if result.get("arch") not in (None, entry.arch):
            result = {}  # the same step at another arch: only run.json's summary is this row's
        rows.append({**result, **{k: v for k, v in dataclasses.asdict(entry).items() if v is not None},
                     "dir": entry.dirname})
    return rows


def _parents(rows: list[dict], manifest) -> dict[str, str]:
    """Each step's layout-diff partner: its manifest parent when in this run, else the previous step."""
    ids = list(dict.fromkeys(r["step"] for r in rows))
    out = {}
    for i, step in enumerate(ids):
        parent = None
        if manifest is not None and step in manifest.steps:
            parent = manifest.steps[step].parent
        if parent not in ids:
            parent = ids[i - 1] if i > 0 else None
        if parent:
            out[step] = parent
    return out


def is_expanded(row: dict) -> bool:
    """Departed and failed steps are shown open: they are what the reader came for."""
    return row.get("verdict") in OPEN_VERDICTS or row.get("outcome") not in CALM_OUTCOMES


def _anchor(row: dict) -> str:
    suffix = f"-{row['toolchain']}" if row.get("toolchain") else ""
    return f"step-{row.get('step')}-{row.get('arch')}{suffix}"


def _manifest_step(manifest, step_id: str):
    if manifest is None:
        return None
    return manifest.steps.get(step_id)


def _column(r: dict) -> str:
    """A matrix column: the compile target, and the toolchain in a toolchain matrix run."""
    return f"{r.get('arch')} · {r['toolchain']}" if r.get("toolchain") else str(r.get("arch"))


def _matrix(rows: list[dict], manifest=None) -> str:
    archs = list(dict.fromkeys(_column(r) for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    by_key = {(r["step"], _column(r)): r for r in rows}
    out = ['<table class="matrix"><tr><th>step</th>', *[f"<th>{_e(a)}</th>" for a in archs], "</tr>"]
    for step in steps:
        info = _manifest_step(manifest, step)
        change = ""
        if info is not None and info.change:
            short = info.change if len(info.change) <= 110 else info.change[:109] + "…"
            change = f'<div class="change" title="{_e(info.change)}">{_e(short)}</div>'
        first = next(r for r in rows if r["step"] == step)
        out.append(f'<tr><th><a href="#{_e(_anchor(first))}">{_e(step)}</a>{change}</th>')
        for arch in archs:
            r = by_key.get((step, arch))
            if r is None:
                out.append('<td class="cell muted">-</td>')
                continue
            outcome, verdict = r.get("outcome", "?"), r.get("verdict", "")
            out.append(
                f'<td class="cell" title="{_e(r.get("reason"))}">'
                f'<a href="#{_e(_anchor(r))}">{_badge(outcome)}</a> {_verdict(verdict)}<br>'
                f'<span class="expect">expected: {_e(r.get("expected") or "unknown")}'
                f'{" (" + _e(r.get("expected_key")) + ")" if r.get("expected_key") else ""}</span>'
                f'<div class="reason">{_e(r.get("reason"))}</div></td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


# --- facts: only what is there ------------------------------------------------------------------------------
def facts_line(r: dict) -> str:
    """'expected X (key); device sm_90; compile 2.0 s; run 0.50 s; exit 0': absent facts are left out."""
    parts = [f'expected <b>{_e(r.get("expected") or "unknown")}</b>'
             + (f' ({_e(r["expected_key"])})' if r.get("expected_key") else "")]
    parts.append(f'device {_e(r["device_arch"])}' if r.get("device_arch") else "no GPU")
    for label, key in (("compile", "compile_seconds"), ("run", "run_seconds")):
        shown = _seconds(r.get(key))
        if shown:
            parts.append(f"{label} {_e(shown)}")
    if isinstance(r.get("compile_rss_bytes"), int):
        parts.append(f"compiler peak RSS {r['compile_rss_bytes'] / 2**30:.1f} GiB")
    if r.get("exit_code") is not None:
        parts.append(f"exit {_e(r['exit_code'])}")
    if r.get("signal"):
        parts.append(f"signal {_e(r['signal'])}")
    cache = r.get("cache")
    if isinstance(cache, dict) and cache.get("status"):
        parts.append(f"compile cache {_e(cache['status'])}")
    if r.get("toolchain"):
        parts.append(f"toolchain {_e(r['toolchain'])}")
    return "; ".join(parts)


# --- @@repro records as tables ------------------------------------------------------------------------------
def _value_html(value) -> str:
    if isinstance(value, dict):
        return _kv_table(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return _e(", ".join("null" if v is None else str(v) for v in value))
        return f"<code>{_e(json.dumps(value))}</code>"
    if value is None:
        return '<span class="muted">null</span>'
    return _e(value)


def _kv_table(data: dict, title: str | None = None) -> str:
    rows = []
    for key, value in data.items():
        bad = (key == "fits" and value is False) or (key == "mismatches" and value not in (0, None)) \
            or (key == "status" and isinstance(value, str) and value.startswith("kError"))
        rows.append(f'<tr><th>{_e(key)}</th><td{" class=bad" if bad else ""}>{_value_html(value)}</td></tr>')
    head = f'<tr><th colspan="2">{_e(title)}</th></tr>' if title else ""
    return f"<table>{head}{''.join(rows)}</table>"


def records_html(events: list) -> str:
    """config, preflight, device, status and check records, one table each (not raw JSON)."""
    if not isinstance(events, list):  # a damaged or foreign result.json: nothing to show, nothing to crash on
        return ""
    tables, seen = [], {}
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "invalid":
            tables.append(_kv_table({"line": event.get("raw"), "error": event.get("error")},
                                    "malformed @@repro line"))
            continue
        if kind not in RECORD_EVENTS:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        title = kind if seen[kind] == 1 else f"{kind} ({seen[kind]})"
        tables.append(_kv_table({k: v for k, v in event.items() if k != "event"}, title))
    return f'<div class="records">{"".join(tables)}</div>' if tables else ""


# --- source diff against the parent ---------------------------------------------------------------------------
@dataclass
class SourceDiff:
    parent: str
    text: str     # the unified diff ("" when the sources are the same)
    where: str    # which copies were compared, for the reader


def source_diff(run_path: pathlib.Path, manifest, step_id: str) -> SourceDiff | None:
    """The step's .cu against its parent's: the copies in the run directory when both are there (what was
    compiled), else the manifest's repros/ (this checkout); None without a manifest parent or files."""
    import difflib

    from ..chain import step_diff
    from ..errors import GpuReproError

    step = _manifest_step(manifest, step_id)
    if step is None or not step.parent or step.parent not in manifest.steps:
        return None
    parent = manifest.steps[step.parent]
    mine = pathlib.Path(run_path) / "steps" / step.id / step.file
    theirs = pathlib.Path(run_path) / "steps" / parent.id / parent.file
    if mine.is_file() and theirs.is_file():
        try:
            old = theirs.read_text(errors="replace").splitlines(keepends=True)
            new = mine.read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return None
        text = "".join(difflib.unified_diff(old, new, f"steps/{parent.id}/{parent.file}",
                                            f"steps/{step.id}/{step.file}"))
        return SourceDiff(parent.id, text, "the copies in this run directory (what was compiled)")
    try:
        text = step_diff(manifest, step)
    except (OSError, GpuReproError, KeyError):
        return None
    return SourceDiff(parent.id, text, f"{manifest.root.name}/ in this checkout (the run directory lacks "
                                       f"{'both copies' if not mine.is_file() and not theirs.is_file() else 'a copy'}; "
                                       "it may differ from what ran)")


def diff_html(text: str) -> str:
    lines = []
    for line in _visible(text).splitlines():
        kind = ("d-file" if line.startswith(("+++", "---")) else "d-add" if line.startswith("+")
                else "d-del" if line.startswith("-") else "d-hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{kind}">{_e(line) or " "}</span>' if kind else f"<span>{_e(line) or ' '}</span>")
    return f'<pre class="diff">{"".join(lines)}</pre>'


def _diff_section(d: SourceDiff | None, open_: bool) -> str:
    if d is None:
        return ""
    if not d.text:
        return f'<p class="muted">source: the same as {_e(d.parent)}\'s (compared: {_e(d.where)})</p>'
    return (f'<details class="srcdiff"{" open" if open_ else ""}><summary>source diff vs {_e(d.parent)}: '
            f"{changed_lines(d.text)} changed lines <span class=\"muted\">(from {_e(d.where)})</span></summary>"
            f"{diff_html(d.text)}</details>")


# --- compile log: repeated diagnostics folded, the first error on top ------------------------------------------
DIAG_RE = re.compile(
    r"^(?P<loc>\S.*?\(\d+\)|\S+?:\d+(?::\d+)?): (?P<sev>catastrophic error|fatal error|error|warning|remark|note)"
    r"(?: (?P<code>#\d+(?:-[A-Z])?))?: (?P<msg>.*)$")
REMARK_RE = re.compile(r"^Remark: ")
ERROR_SEVERITIES = ("catastrophic error", "fatal error", "error")


@dataclass
class Diagnostic:
    line: int            # 1-based line of its header in the log
    severity: str
    code: str | None
    message: str
    text: str            # header and continuation lines


@dataclass
class Fold:
    """Repeats of one diagnostic (the same text, or warnings with the same code), shown once with a count."""

    severity: str
    code: str | None
    first: Diagnostic
    variants: dict[str, int] = field(default_factory=dict)  # distinct text -> times

    @property
    def count(self) -> int:
        return sum(self.variants.values())


@dataclass
class FoldedLog:
    items: list            # str (plain text) | Diagnostic (shown once) | Fold
    first_error: Diagnostic | None
    reason: str            # classify's first compile error (what the result's reason says)
    lines: int
    folded: int            # diagnostics not shown in place (repeats)

    @property
    def folds(self) -> list[Fold]:
        return [i for i in self.items if isinstance(i, Fold) and i.count > 1]


def _blocks(text: str) -> list:
    """The log as plain lines and diagnostics (a header plus its indented continuation lines)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        match = DIAG_RE.match(lines[i])
        if not match and not REMARK_RE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        j = i + 1
        if match:
            while j < len(lines) and (lines[j][:1] in (" ", "\t") or (lines[j] == "" and j + 1 < len(lines)
                                                                       and lines[j + 1][:1] in (" ", "\t"))):
                j += 1
            out.append(Diagnostic(i + 1, match["sev"], match["code"], match["msg"], "\n".join(lines[i:j])))
        else:
            out.append(Diagnostic(i + 1, "remark", None, lines[i], lines[i]))
        i = j
    return out


def fold_compile_log(text: str) -> FoldedLog:
    """Warnings with the same code (CUTLASS's #20012-D by the hundred) and identical diagnostics become one
    entry with a count at the place of the first; errors are never merged unless identical."""
    items, folds = [], {}
    first_error, folded, plain = None, 0, []
    for block in _blocks(text):
        if isinstance(block, str):
            plain.append(block)
            continue
        if any(line.strip() for line in plain):  # blank lines between folded repeats say nothing
            items.append("\n".join(plain))
        plain = []
        if block.severity in ERROR_SEVERITIES and first_error is None:
            first_error = block
        if block.code and block.severity in ("warning", "remark"):
            key = ("code", block.severity, block.code)
        else:
            key = ("same", block.text)
        fold = folds.get(key)
        if fold is None:
            fold = folds[key] = Fold(block.severity, block.code if key[0] == "code" else None, block)
            items.append(fold)
        else:
            folded += 1
        fold.variants[block.text] = fold.variants.get(block.text, 0) + 1
    if any(line.strip() for line in plain):
        items.append("\n".join(plain))
    return FoldedLog(items, first_error, first_compile_error(text), text.count("\n") + 1, folded)


def _diag_pre(d: Diagnostic) -> str:
    cls = ' class="diag-error"' if d.severity in ERROR_SEVERITIES else ""
    return f"<pre><span{cls}>{_e(d.text)}</span></pre>"


def _fold_html(fold: Fold) -> str:
    if fold.count == 1:
        return _diag_pre(fold.first)
    distinct = len(fold.variants)
    what = f"{fold.severity} {fold.code}" if fold.code else fold.severity
    head = fold.first.message if len(fold.first.message) <= 140 else fold.first.message[:139] + "…"
    shown = list(fold.variants.items())[:50]
    body = "\n\n".join((f"[× {n}]\n" if n > 1 else "") + t for t, n in shown)
    more = f"\n\n… {distinct - len(shown)} more distinct, in compile.log" if distinct > len(shown) else ""
    return (f'<details class="fold"><summary><span class="count">× {fold.count}</span> {_e(what)}'
            f'{f" ({distinct} distinct)" if distinct > 1 else ""}, first at line {fold.first.line}: {_e(head)}'
            f"</summary><pre>{_e(body + more)}</pre></details>")


def _cap_items(items: list) -> list:
    """Plain text beyond LOG_LIMIT characters is cut from the middle (the file has it all)."""
    sizes = [len(i) if isinstance(i, str) else 200 for i in items]
    if sum(sizes) <= LOG_LIMIT:
        return items
    head, tail, budget = [], [], LOG_LIMIT // 2
    for item, size in zip(items, sizes):
        if budget - size < 0:
            break
        head.append(item)
        budget -= size
    budget = LOG_LIMIT // 2
    for item, size in zip(reversed(items[len(head):]), reversed(sizes[len(head):])):
        if budget - size < 0:
            break
        tail.insert(0, item)
        budget -= size
    left = len(items) - len(head) - len(tail)
    return [*head, f"… {left} parts of the log left out here (compile.log has them all) …", *tail]


def compile_log_html(path: pathlib.Path, *, open_: bool) -> str:
    text, cut = _read_tail(path, FOLD_READ_LIMIT)
    log = fold_compile_log(text)
    notes = [f"{log.lines} lines"]
    if log.folds:
        notes.append(f"{log.folded} repeated diagnostics folded into {len(log.folds)}")
    if log.first_error:
        notes.append(f"first error at line {log.first_error.line}")
    if cut:
        notes.append(f"last {FOLD_READ_LIMIT // 2**20} MiB of {path.stat().st_size} bytes")
    parts = [f'<details class="log"{" open" if open_ else ""}><summary>compile.log '
             f'<span class="muted">({_e("; ".join(notes))})</span></summary>']
    if log.first_error or open_:
        parts.append(f'<div class="first-error"><b>first error</b>'
                     f'{f" (line {log.first_error.line})" if log.first_error else ""}: {_e(log.reason)}'
                     f"{_diag_pre(log.first_error) if log.first_error else ''}</div>")
    for item in _cap_items(log.items):
        parts.append(f"<pre>{_e(item)}</pre>" if isinstance(item, str) else _fold_html(item))
    parts.append("</details>")
    return "".join(parts)


# --- layouts ------------------------------------------------------------------------------------------------
def _layout_section(run_path: pathlib.Path, step: str, partner: str | None) -> str:
    mine = _read_json(run_path / "steps" / step / "layout.json")
    if not isinstance(mine, list):
        return ""
    theirs = _read_json(run_path / "steps" / partner / "layout.json") if partner else None
    if not isinstance(theirs, list):
        listed = "".join(f"<tr><td>{_e(r.get('name'))}</td><td>{_e(r.get('type'))}</td>"
                         f"<td><code>{_e(str(r.get('bytes_hex', ''))[:96])}</code></td></tr>" for r in mine)
        return (f"<details><summary>layouts ({len(mine)}; no parent layouts in this run to diff against)</summary>"
                f"<table><tr><th>name</th><th>type</th><th>bytes (hex)</th></tr>{listed}</table></details>")
    rows = diff_layouts(theirs, mine)
    differing = sum(1 for r in rows if r.status != "same")
    body = "".join(
        f"<tr><td>{_e(r.name)}</td><td>{_e(r.status)}</td><td>{_e(', '.join(r.fields))}</td>"
        f"<td>{_e(' '.join(map(str, r.first_offsets)))}</td></tr>" for r in rows)
    return (f"<details{' open' if differing else ''}><summary>layout diff vs {_e(partner)}: {differing} of "
            f"{len(rows)} differ</summary><table><tr><th>name</th><th>status</th><th>fields</th>"
            f"<th>first differing byte offsets</th></tr>{body}</table></details>")


# --- one step ---------------------------------------------------------------------------------------------
RUN_LOG_OPEN = ("runtime_error", "init_error", "can_implement_error", "mismatch", "timeout", "infra_error")


def _step_section(run_path: pathlib.Path, r: dict, partner: str | None, manifest=None,
                  diffs: dict | None = None) -> str:
    step = r["step"]
    base = run_path / "steps" / r.get("dir", step)
    expanded = is_expanded(r)
    state = ("departed" if r.get("verdict") == "departed" else "infra" if r.get("verdict") == "infra"
             else "failed" if expanded else "calm")
    parts = [f'<details id="{_e(_anchor(r))}" class="step s-{state}"{" open" if expanded else ""}>'
             f'<summary><b>{_e(step)}[{_e(_column(r))}]</b> {_badge(r.get("outcome"))} '
             f'{_verdict(r.get("verdict"))} &mdash; {_e(r.get("reason"))}</summary><div class="body">',
             f'<p class="facts">{facts_line(r)}</p>']
    info = _manifest_step(manifest, step)
    if info is not None:
        parent = f' <span class="muted">(parent: {_e(info.parent)})</span>' if info.parent else \
            ' <span class="muted">(no parent: a root of the chain)</span>'
        parts.append(f"<p><b>change:</b> {_e(info.change)}{parent}</p>")
    if r.get("reproduce"):
        parts.append(f"<p>reproduce: <code>{_e(r['reproduce'])}</code></p>")
    patches = [p for p in r.get("patches") or [] if isinstance(p, dict)]
    if patches:
        parts.append("<p>CUTLASS patches: " + ", ".join(
            f"<code>{_e(p.get('name'))}</code> ({_e(str(p.get('sha256'))[:12])})" for p in patches) + "</p>")
    if diffs is not None:
        if step not in diffs:
            diffs[step] = source_diff(run_path, manifest, step)
        parts.append(_diff_section(diffs[step], expanded))
    records = records_html(r.get("events"))
    if records:
        parts.append(f'<details class="rec"{" open" if expanded else ""}><summary>records (config, preflight, '
                     f"status, check)</summary>{records}</details>")
    for name in LOG_NAMES:
        path = base / name
        if not path.is_file():
            continue
        if name == "compile.log":
            parts.append(compile_log_html(path, open_=expanded and r.get("outcome") == "compile_error"))
            continue
        text, cut = _log(path)
        note = f" (last {LOG_LIMIT // 1024} KiB of {path.stat().st_size} bytes)" if cut else ""
        open_ = expanded and name == "run.log" and r.get("outcome") in RUN_LOG_OPEN
        parts.append(f'<details{" open" if open_ else ""}><summary>{_e(name)}{_e(note)}</summary>'
                     f"<pre>{_e(text)}</pre></details>")
    suffix = f"@{r['toolchain']}" if r.get("toolchain") else ""  # a matrix run: the parent in the same toolchain
    parts.append(_layout_section(run_path, r.get("dir", step), f"{partner}{suffix}" if partner else None))
    if base.is_dir():
        files = sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink())
        links = ", ".join(f'<a href="{_e(p.relative_to(run_path).as_posix())}">'
                          f'{_e(p.relative_to(base).as_posix())}</a> ({p.stat().st_size} B)' for p in files)
        parts.append(f'<p class="muted">files: {links}</p>')
    parts.append("</div></details>")
    return "".join(parts)


def _facts_table(facts: dict) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items() if v not in (None, ""))
    return f"<table>{body}</table>"


def _joined(*pieces: str | None, sep: str = "; ") -> str:
    return sep.join(p for p in pieces if p)


def render(run_path: pathlib.Path, manifest=None) -> str:
    run_path = pathlib.Path(run_path)
    record = RunRecord.read(run_path)
    rows = _step_rows(run_path, record)
    partners = _parents(rows, manifest)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("verdict", "?")] = counts.get(r.get("verdict", "?"), 0) + 1
    where = f"{record.env('gpu_name')} ({record.env('gpu_arch')})" if record.env("gpu_name") else "no GPU"
    status = _joined(f'status <b class="status-{_e(record.status)}">{_e(record.status)}</b>'
                     + (f", exit code {_e(record.exit_code)}" if record.exit_code is not None else ""),
                     f"backend {_e(record.backend)}" if record.backend else None, f"device {_e(where)}",
                     f"started {_e(record.started_at)}" if record.started_at else None,
                     f"finished {_e(record.finished_at)}" if record.finished_at else None)
    body = [f"<h1>gpurepro run {_e(record.run_id)}</h1>", f"<p>{status}</p>"]
    if record.command:
        body.append(f"<p>command: <code>{_e(' '.join(record.command))}</code></p>")
    git = _joined(f"git {_e(record.git_commit)}{' (dirty)' if record.git_dirty else ''}" if record.git_commit
                  else None, f"gpurepro {_e(record.tool.get('version'))}" if record.tool.get("version") else None)
    if git:
        body.append(f"<p>{git}</p>")
    if record.error:
        body.append(f"<p><b>error:</b> {_e(record.error)}</p>")
    if (run_path / COMPARE).is_file():
        body.append(f'<p>this run beside the one it replays: <a href="{COMPARE}">{COMPARE}</a></p>')
    kernels = record.kernels
    if kernels and kernels.counts:  # a kernels.test run: pytest counts and failures, no steps
        body += ["<h2>Kernel tests</h2>", _facts_table(kernels.counts),
                 "".join(f"<details open><summary>{_e(f.get('test'))}: {_e(f.get('outcome'))}</summary>"
                         f"<pre>{_e(f.get('message'))}</pre></details>" for f in kernels.failed)]
    attention = [r for r in rows if is_expanded(r)]
    body += ["<h2>Results</h2>",
             "<p>" + ", ".join(f"{_e(v)}: {n}" for v, n in sorted(counts.items())) + "</p>" if counts else
             "<p>no steps recorded</p>"]
    if attention:
        body.append("<p>needs a look: " + ", ".join(
            f'<a href="#{_e(_anchor(r))}">{_e(r["step"])}[{_e(r.get("arch"))}]</a> ({_e(r.get("outcome"))}, '
            f'{_e(r.get("verdict"))})' for r in attention) + "</p>")
    diffs: dict = {} if manifest is not None else None
    body += [_matrix(rows, manifest) if rows else "",
             "<h2>Steps</h2>" if rows else "",
             *[_step_section(run_path, r, partners.get(r["step"]), manifest, diffs) for r in rows],
             "<h2>Environment</h2>",
             _facts_table({"backend": record.backend, "git commit": record.git_commit,
                           "git dirty": record.git_dirty, "git branch": record.git.get("branch"), **record.environment}),
             "<h3>Host</h3>", _facts_table(record.host),
             f"<details><summary>environment variables ({len(record.env_vars)}, secret-looking values redacted)</summary>"
             + _facts_table(record.env_vars) + "</details>",
             f'<p class="muted">files: <a href="{RUN_JSON}">run.json</a>, <a href="junit.xml">junit.xml</a>, '
             f'<a href="summary.md">summary.md</a></p>']
    return _page(f"gpurepro run {record.run_id}", body)


def write_report(run_path: pathlib.Path, manifest=None) -> pathlib.Path:
    path = pathlib.Path(run_path) / INDEX
    atomic_write(path, render(run_path, manifest))
    return path


# --- old vs new: a bundled run and its replay ------------------------------------------------------------------
def _outcome_cell(r: dict | None) -> str:
    if not r:
        return '<td class="muted">not run</td>'
    return (f'<td>{_badge(r.get("outcome"))} {_verdict(r.get("verdict"))}'
            f'<div class="reason">{_e(r.get("reason"))}</div>'
            f'<div class="expect">{facts_line(r)}</div></td>')


def _side_by_side_records(old: list, new: list) -> str:
    """Each config/preflight record key with its old and new value; differing values marked."""
    def firsts(events):
        out = {}
        for e in events if isinstance(events, list) else []:
            if isinstance(e, dict) and e.get("event") in RECORD_EVENTS and e["event"] not in out:
                out[e["event"]] = {k: v for k, v in e.items() if k != "event"}
        return out

    a, b = firsts(old), firsts(new)
    tables = []
    for kind in RECORD_EVENTS:
        if kind not in a and kind not in b:
            continue
        ra, rb = a.get(kind, {}), b.get(kind, {})
        rows = []
        for key in dict.fromkeys([*ra, *rb]):
            va, vb = ra.get(key, "—"), rb.get(key, "—")
            cls = ' class="differs"' if va != vb else ""
            rows.append(f"<tr{cls}><th>{_e(key)}</th><td>{_value_html(va)}</td><td>{_value_html(vb)}</td></tr>")
        tables.append(f'<table><tr><th>{_e(kind)}</th><th>old</th><th>new</th></tr>{"".join(rows)}</table>')
    return f'<div class="records">{"".join(tables)}</div>' if tables else ""


def _source_change(old_run: pathlib.Path, new_run: pathlib.Path, step: str) -> str:
    import difflib

    old_dir, new_dir = old_run / "steps" / step, new_run / "steps" / step
    parts = []
    for new_file in sorted(new_dir.glob("*.cu")) if new_dir.is_dir() else []:
        old_file = old_dir / new_file.name
        if not old_file.is_file():
            parts.append(f'<p class="muted">{_e(new_file.name)}: not in the old run</p>')
            continue
        a = old_file.read_text(errors="replace").splitlines(keepends=True)
        b = new_file.read_text(errors="replace").splitlines(keepends=True)
        if a == b:
            parts.append(f'<p class="muted">{_e(new_file.name)}: the same source in both runs</p>')
            continue
        text = "".join(difflib.unified_diff(a, b, f"old/{new_file.name}", f"new/{new_file.name}"))
        parts.append(f"<details open><summary>{_e(new_file.name)}: {changed_lines(text)} changed lines between "
                     f"the runs</summary>{diff_html(text)}</details>")
    return "".join(parts)


def _first_error(run: pathlib.Path, step: str) -> str:
    path = run / "steps" / step / "compile.log"
    if not path.is_file():
        return ""
    text, _ = _read_tail(path, FOLD_READ_LIMIT)
    log = fold_compile_log(text)
    return _diag_pre(log.first_error) if log.first_error else ""


def render_comparison(old_run_path: pathlib.Path, new_run_path: pathlib.Path) -> str:
    """An old run (e.g. extracted from a bundle) beside a new one (its replay): environment, then each step's
    outcome old | new, changed first and open with records, first errors and source changes side by side."""
    from ..replay import COMPARED_FACTS

    old_path, new_path = pathlib.Path(old_run_path), pathlib.Path(new_run_path)
    old, new = RunRecord.read(old_path), RunRecord.read(new_path)
    old_rows = {(r["step"], r.get("arch")): r for r in _step_rows(old_path, old)}
    new_rows = {(r["step"], r.get("arch")): r for r in _step_rows(new_path, new)}
    keys = list(dict.fromkeys([*old_rows, *new_rows]))
    changed = [k for k in keys if (old_rows.get(k) or {}).get("outcome") != (new_rows.get(k) or {}).get("outcome")]
    body = [f"<h1>gpurepro: {_e(old.run_id)} &rarr; {_e(new.run_id)}</h1>",
            f"<p><b>{len(changed)}</b> of {len(keys)} step results changed outcome. old: <code>{_e(old_path)}</code>, "
            f'new: <a href="{INDEX}">{_e(new.run_id)}</a></p>', "<h2>Where they ran</h2>"]
    facts = [("run", old.run_id, new.run_id), ("status", old.status, new.status),
             ("exit code", old.exit_code, new.exit_code), ("started", old.started_at, new.started_at),
             ("git commit", old.git_commit, new.git_commit), ("git dirty", old.git_dirty, new.git_dirty),
             ("gpurepro", old.tool.get("version"), new.tool.get("version")), ("backend", old.backend, new.backend),
             ("host", old.hostname, new.hostname),
             *[(k, old.env(k), new.env(k)) for k in COMPARED_FACTS]]
    rows = []
    for name, a, b in facts:
        if a in (None, "") and b in (None, ""):
            continue  # neither run knows it: leave it out
        cls = ' class="differs"' if name not in ("run", "started") and (a or None) != (b or None) else ""
        rows.append(f"<tr{cls}><th>{_e(name)}</th><td>{_e(a if a not in (None, '') else '—')}</td>"
                    f"<td>{_e(b if b not in (None, '') else '—')}</td></tr>")
    body.append(f'<table><tr><th></th><th>old</th><th>new</th></tr>{"".join(rows)}</table>')
    body.append("<h2>Steps</h2>")
    table = ['<table><tr><th>step</th><th>old</th><th>new</th></tr>']
    for key in sorted(keys, key=lambda k: (k not in changed, keys.index(k))):
        cls = ' class="changed-row"' if key in changed else ""
        table.append(f'<tr{cls}><th><a href="#cmp-{_e(key[0])}-{_e(key[1])}">{_e(key[0])}[{_e(key[1])}]</a>'
                     f'{"<br><b>changed</b>" if key in changed else ""}</th>'
                     f"{_outcome_cell(old_rows.get(key))}{_outcome_cell(new_rows.get(key))}</tr>")
    table.append("</table>")
    body.append("".join(table))
    for key in keys:
        a, b = old_rows.get(key) or {}, new_rows.get(key) or {}
        step = key[0]
        errors = (_first_error(old_path, step), _first_error(new_path, step))
        inner = [_source_change(old_path, new_path, step), _side_by_side_records(a.get("events"), b.get("events"))]
        if any(errors):
            inner.append('<div class="side"><div><h3>old: first compile error</h3>' + (errors[0] or "<p>none</p>")
                         + '</div><div><h3>new: first compile error</h3>' + (errors[1] or "<p>none</p>") + "</div></div>")
        body.append(f'<details id="cmp-{_e(step)}-{_e(key[1])}" class="step s-{"departed" if key in changed else "calm"}"'
                    f'{" open" if key in changed else ""}><summary><b>{_e(step)}[{_e(key[1])}]</b> '
                    f'{_badge(a.get("outcome") or "not run")} <span class="arrow">&rarr;</span> '
                    f'{_badge(b.get("outcome") or "not run")}</summary><div class="body">{"".join(inner)}</div></details>')
    return _page(f"gpurepro {old.run_id} vs {new.run_id}", body)


def write_comparison(old_run_path: pathlib.Path, new_run_path: pathlib.Path, manifest=None) -> pathlib.Path:
    """compare.html in the new run directory, and the new run's index.html rewritten to link it."""
    path = pathlib.Path(new_run_path) / COMPARE
    atomic_write(path, render_comparison(old_run_path, new_run_path))
    write_report(new_run_path, manifest)
    return path


# --- the nightly directory -----------------------------------------------------------------------------------
def _cls(name: str) -> str:
    return f'<span class="cls c-{_e(name)}">{_e(name)}</span>'


def _result_box(result, label: str | None = None) -> str:
    return (f'<div>{f"<span class=muted>{_e(label)}</span> " if label else ""}{_badge(result.outcome.value)}'
            f'<div class="reason">{_e(result.reason)}</div></div>')


def render_nightly(nightly_dir: pathlib.Path) -> str:
    """steps x targets: each cell the final outcome and its classification; a departed step's first run
    and its rerun side by side; then what changed, what was flaky, infrastructure errors and kernel tests."""
    from ..nightly import CLASS_ORDER, NIGHTLY_JSON, TargetReport

    from ..errors import BadInputError

    nightly_dir = pathlib.Path(nightly_dir)
    data = _read_json(nightly_dir / NIGHTLY_JSON)
    if not isinstance(data, dict):
        raise BadInputError(f"{nightly_dir / NIGHTLY_JSON}: missing or not JSON",
                            hint="name a directory written by `invoke ci.nightly` or `invoke report.merge`")
    title = f"gpurepro nightly {data.get('nightly_id') or nightly_dir.name}"
    head = _joined(f'status <b class="status-{_e(data.get("status"))}">{_e(data.get("status"))}</b>'
                   + (f", exit code {_e(data['exit_code'])}" if data.get("exit_code") is not None else ""),
                   f"started {_e(data['started_at'])}" if data.get("started_at") else None,
                   f"finished {_e(data['finished_at'])}" if data.get("finished_at") else None)
    body = [f"<h1>{_e(title)}</h1>", f"<p>{head}</p>"]
    raw = data.get("targets") or []
    if not raw or not all(isinstance(t, dict) for t in raw):
        body.append(f"<p>no results: the nightly did not finish (targets: {_e(', '.join(map(str, raw)))})</p>")
        return _page(title, body)
    reports = [TargetReport.from_json(t) for t in raw]
    entries = {(r.target.name, e.result.step): e for r in reports for e in r.entries}
    by_class = {c: [(r, e) for r in reports for e in r.entries if e.classification == c] for c in CLASS_ORDER}
    body.append("<p>" + ", ".join(f"{_cls(c)} {len(by_class[c])}" for c in CLASS_ORDER if by_class[c]) + "</p>")

    # per target: device, status and links to its run directories' own pages
    rows = []
    for r in reports:
        links = ", ".join(f'<a href="{_e(run)}/{INDEX}">{"first run" if i == 0 else "rerun" if i == 1 else run}</a>'
                          for i, run in enumerate(r.runs) if (nightly_dir / run / INDEX).is_file())
        kernels = None if not any(t.kernels for t in reports) else ""
        if r.kernels:
            counts = ", ".join(f"{n} {c}" for c, n in sorted((r.kernels.get("counts") or {}).items()))
            kernels = _e(counts or r.kernels.get("error") or "no tests")
        rows.append(f"<tr><th>{_e(r.target.name)}</th><td>{_e(r.target.endpoint or r.target.backend)}</td>"
                    f"<td>{_e(r.device or '—')}</td><td class=\"status-{'complete' if r.status == 'complete' else 'failed'}\">"
                    f"{_e(r.status)}{' — ' + _e(r.error) if r.error else ''}</td>"
                    f"{'' if kernels is None else f'<td>{kernels}</td>'}<td>{links}</td></tr>")
    with_kernels = any(t.kernels for t in reports)
    body += ["<h2>Targets</h2>", "<table><tr><th>target</th><th>where</th><th>device</th><th>status</th>"
             f"{'<th>kernel tests</th>' if with_kernels else ''}<th>runs</th></tr>{''.join(rows)}</table>"]

    steps = list(dict.fromkeys(e.result.step for r in reports for e in r.entries))
    body.append("<h2>Steps × targets</h2>")
    if steps:
        table = ["<table><tr><th>step</th>", *[f"<th>{_e(r.target.name)}</th>" for r in reports], "</tr>"]
        for step in steps:
            table.append(f"<tr><th>{_e(step)}</th>")
            for r in reports:
                e = entries.get((r.target.name, step))
                if e is None:
                    table.append('<td class="muted">-</td>')
                    continue
                x = e.result
                expect = f'<div class="expect">expected {_e(x.expected or "unknown")} ({_e(x.arch)})</div>'
                if e.first is not None:  # rerun: first beside rerun
                    cell = (f'<div class="pair">{_result_box(e.first, "first")}<span class="arrow">&rarr;</span>'
                            f'{_result_box(x, "rerun")}</div>')
                else:
                    cell = _result_box(x)
                table.append(f'<td class="cell" title="{_e(x.reason)}">{_cls(e.classification)}{cell}{expect}</td>')
            table.append("</tr>")
        table.append("</table>")
        body.append("".join(table))
    else:
        body.append("<p>no steps recorded</p>")

    for name, heading in (("changed", "Changed (departed twice)"), ("flaky", "Flaky (departed, then matched)"),
                          ("infra", "Infrastructure errors (no verdict)")):
        if not by_class[name]:
            continue
        body.append(f"<h2>{_e(heading)}</h2>")
        for r, e in by_class[name]:
            first = e.first or e.result
            body.append(f'<details class="step s-{"departed" if name == "changed" else "infra"}" open><summary>'
                        f"<b>{_e(e.result.step)}</b> on <b>{_e(r.target.name)}</b> ({_e(e.result.arch)}) "
                        f"{_cls(name)}</summary><div class=\"body\"><div class=\"side\">"
                        f"<div><h3>first run</h3>{_result_box(first)}<p class=\"expect\">{facts_line(first.to_json())}</p>"
                        f"{records_html(first.events)}</div>"
                        f"<div><h3>rerun</h3>{_result_box(e.result) if e.first else '<p class=muted>none</p>'}"
                        f"{'<p class=expect>' + facts_line(e.result.to_json()) + '</p>' + records_html(e.result.events) if e.first else ''}"
                        f"</div></div>"
                        f"{'<p>reproduce: <code>' + _e(e.result.reproduce) + '</code></p>' if e.result.reproduce else ''}"
                        "</div></details>")
    dead = [r for r in reports if r.error]
    if dead:
        body.append("<h2>Targets that could not run</h2><ul>" + "".join(
            f"<li><b>{_e(r.target.name)}</b>: {_e(r.error)}</li>" for r in dead) + "</ul>")
    failed = [(r, t) for r in reports if r.kernels for t in r.kernels.get("failed") or []]
    if failed:
        body.append("<h2>Failed kernel tests</h2><ul>" + "".join(
            f"<li><b>{_e(r.target.name)}</b>: <code>{_e(t)}</code></li>" for r, t in failed) + "</ul>")
    body.append('<p class="muted">files: <a href="nightly.json">nightly.json</a>, <a href="junit.xml">junit.xml</a>, '
                '<a href="summary.md">summary.md</a></p>')
    return _page(title, body)


def write_nightly_report(nightly_dir: pathlib.Path) -> pathlib.Path:
    """<nightly_dir>/index.html from its nightly.json (written by nightly.write_merged)."""
    path = pathlib.Path(nightly_dir) / INDEX
    atomic_write(path, render_nightly(nightly_dir))
    return path
