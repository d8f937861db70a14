"""index.html: the run as one self-contained page (inline CSS, no scripts, nothing fetched).

Built only from what the run directory holds (run.json, steps/<step>/{result.json, *.log, layout.json}),
so it renders the same from a bundle on another machine. The matrix shows steps x compile targets
coloured by outcome with the expectation beside each result; below it, each step folded with its
reason, reproduce command, logs and layout diff against its parent; then the environment.
A Content-Security-Policy meta tag forbids the browser to load anything from elsewhere.
"""
from __future__ import annotations

import html
import json
import pathlib

from ..chain import diff_layouts
from ..run.directory import RUN_JSON, atomic_write
from ..run.record import RunRecord

INDEX = "index.html"
LOG_LIMIT = 256 * 1024  # per log shown; the whole file stays in the run directory, linked
LOG_NAMES = ("patch.log", "compile.log", "cuobjdump.log", "run.log")
COLOURS = {
    "pass": "#1a7f37", "skipped": "#9a6700", "infra_error": "#8250df", "compile_error": "#b62324",
    "mismatch": "#d1242f", "init_error": "#bc4c00", "can_implement_error": "#a40e26", "runtime_error": "#82071e",
    "timeout": "#6e7781",
}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f6f8fa}.cell{min-width:170px}.outcome{display:inline-block;color:#fff;border-radius:4px;padding:1px 7px;font-weight:600}
.expect{color:#57606a;font-size:12px}.verdict{font-size:12px;font-weight:600}.v-departed{color:#cf222e}.v-infra{color:#8250df}
.v-match{color:#1a7f37}.v-new{color:#0969da}.v-not_run{color:#9a6700}.reason{font-size:12px;max-width:460px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:480px;font-size:12px;white-space:pre-wrap;word-break:break-all}
details{margin:4px 0}summary{cursor:pointer}.status-complete{color:#1a7f37}.status-failed,.status-interrupted{color:#cf222e}
code{background:#f6f8fa;padding:0 3px}.muted{color:#57606a}
""" + "".join(f".o-{name}{{background:{colour}}}" for name, colour in COLOURS.items())


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log(path: pathlib.Path) -> tuple[str, bool]:
    data = path.read_bytes()
    cut = len(data) > LOG_LIMIT
    text = data[-LOG_LIMIT:].decode("utf-8", errors="replace")
    # control characters made visible (as in JUnit), except newlines and tabs
    text = "".join(c if c in "\n\t" or c >= " " else f"\\x{ord(c):02x}" for c in text)
    return text, cut


def _step_rows(run_path: pathlib.Path, record: RunRecord) -> list[dict]:
    """One dict per step: run.json's summary merged with the step's result.json when it is there."""
    import dataclasses

    rows = []
    for entry in record.steps:
        result = _read_json(run_path / "steps" / entry.step / "result.json") or {}
        rows.append({**result, **{k: v for k, v in dataclasses.asdict(entry).items() if v is not None}})
    return rows


def _parents(rows: list[dict], manifest) -> dict[str, str]:
    """Each step's layout-diff partner: its manifest parent when in this run, else the previous step."""
    ids = [r["step"] for r in rows]
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


def _matrix(rows: list[dict]) -> str:
    archs = list(dict.fromkeys(r.get("arch") for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    by_key = {(r["step"], r.get("arch")): r for r in rows}
    out = ['<table class="matrix"><tr><th>step</th>', *[f"<th>{_e(a)}</th>" for a in archs], "</tr>"]
    for step in steps:
        out.append(f'<tr><th><a href="#step-{_e(step)}">{_e(step)}</a></th>')
        for arch in archs:
            r = by_key.get((step, arch))
            if r is None:
                out.append('<td class="cell muted">-</td>')
                continue
            outcome, verdict = r.get("outcome", "?"), r.get("verdict", "")
            out.append(
                f'<td class="cell" title="{_e(r.get("reason"))}">'
                f'<span class="outcome o-{_e(outcome)}">{_e(outcome)}</span> '
                f'<span class="verdict v-{_e(verdict)}">{_e(verdict)}</span><br>'
                f'<span class="expect">expected: {_e(r.get("expected") or "unknown")}'
                f'{" (" + _e(r.get("expected_key")) + ")" if r.get("expected_key") else ""}</span>'
                f'<div class="reason">{_e(r.get("reason"))}</div></td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


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


def _step_section(run_path: pathlib.Path, r: dict, partner: str | None) -> str:
    step = r["step"]
    base = run_path / "steps" / step
    parts = [f'<details id="step-{_e(step)}"><summary><b>{_e(r.get("step"))}[{_e(r.get("arch"))}]</b> '
             f'<span class="outcome o-{_e(r.get("outcome"))}">{_e(r.get("outcome"))}</span> '
             f'<span class="verdict v-{_e(r.get("verdict"))}">{_e(r.get("verdict"))}</span> '
             f'&mdash; {_e(r.get("reason"))}</summary><div style="margin-left:18px">',
             f'<p>expected <b>{_e(r.get("expected") or "unknown")}</b> ({_e(r.get("expected_key") or "no key")}); '
             f'device {_e(r.get("device_arch") or "none")}; compile {_e(r.get("compile_seconds"))} s, '
             f'run {_e(r.get("run_seconds"))} s, exit {_e(r.get("exit_code"))}'
             f'{", signal " + _e(r.get("signal")) if r.get("signal") else ""}</p>']
    if r.get("reproduce"):
        parts.append(f"<p>reproduce: <code>{_e(r['reproduce'])}</code></p>")
    if r.get("patches"):
        parts.append("<p>CUTLASS patches: " + ", ".join(
            f"<code>{_e(p.get('name'))}</code> ({_e(str(p.get('sha256'))[:12])})" for p in r["patches"]) + "</p>")
    for name in LOG_NAMES:
        path = base / name
        if path.is_file():
            text, cut = _log(path)
            note = f" (last {LOG_LIMIT // 1024} KiB of {path.stat().st_size} bytes)" if cut else ""
            parts.append(f'<details><summary>{_e(name)}{_e(note)}</summary><pre>{_e(text)}</pre></details>')
    parts.append(_layout_section(run_path, step, partner))
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


def render(run_path: pathlib.Path, manifest=None) -> str:
    run_path = pathlib.Path(run_path)
    record = RunRecord.read(run_path)
    rows = _step_rows(run_path, record)
    partners = _parents(rows, manifest)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("verdict", "?")] = counts.get(r.get("verdict", "?"), 0) + 1
    where = f"{record.env('gpu_name')} ({record.env('gpu_arch')})" if record.env("gpu_name") else "no GPU"
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>gpurepro run {_e(record.run_id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>gpurepro run {_e(record.run_id)}</h1>",
        f'<p>status <b class="status-{_e(record.status)}">{_e(record.status)}</b>, exit code {_e(record.exit_code)}; '
        f"backend {_e(record.backend)}; device {_e(where)}; started {_e(record.started_at)}, "
        f"finished {_e(record.finished_at)}</p>",
        f"<p>command: <code>{_e(' '.join(record.command))}</code></p>",
        f"<p>git {_e(record.git_commit or 'n/a')}{' (dirty)' if record.git_dirty else ''}; "
        f"gpurepro {_e(record.tool.get('version'))}</p>",
    ]
    if record.error:
        page.append(f"<p><b>error:</b> {_e(record.error)}</p>")
    kernels = record.kernels
    if kernels and kernels.counts:  # a kernels.test run: pytest counts and failures, no steps
        page += ["<h2>Kernel tests</h2>", _facts_table(kernels.counts),
                 "".join(f"<details><summary>{_e(f.get('test'))}: {_e(f.get('outcome'))}</summary>"
                         f"<pre>{_e(f.get('message'))}</pre></details>" for f in kernels.failed)]
    page += ["<h2>Results</h2>",
             "<p>" + ", ".join(f"{_e(v)}: {n}" for v, n in sorted(counts.items())) + "</p>" if counts else
             "<p>no steps recorded</p>",
             _matrix(rows) if rows else "",
             "<h2>Steps</h2>",
             *[_step_section(run_path, r, partners.get(r["step"])) for r in rows],
             "<h2>Environment</h2>",
             _facts_table({"backend": record.backend, "git commit": record.git_commit,
                           "git dirty": record.git_dirty, "git branch": record.git.get("branch"), **record.environment}),
             "<h3>Host</h3>", _facts_table(record.host),
             f"<details><summary>environment variables ({len(record.env_vars)}, secret-looking values redacted)</summary>"
             + _facts_table(record.env_vars) + "</details>",
             f'<p class="muted">files: <a href="{RUN_JSON}">run.json</a>, <a href="junit.xml">junit.xml</a>, '
             f'<a href="summary.md">summary.md</a></p>',
             "</body></html>", ""]
    return "\n".join(page)


def write_report(run_path: pathlib.Path, manifest=None) -> pathlib.Path:
    path = pathlib.Path(run_path) / INDEX
    atomic_write(path, render(run_path, manifest))
    return path
